"""THE registry: every model the package can build, by name, as data.

One ``Preset`` per name: the model class it builds (``family``), the
architecture (``config``, the class's keywords), the image side it is built at
by default, where it sits in the paper (``group``), a recipe hint (the
reference's weight decay) and the authors' released checkpoints for it, each
under a weights tag (``"imagenet"``, ``"cifar10"``, ...; ``list_weights()``).
Everything that needs a model by name reads this table: the public builders
(``keras_t2t.t2t_vit_14`` ...) are generated from it, and ``create_model``,
checkpoint detection, the trainer, the visualiser, the exporter, the converter
and the FLOP counter all resolve names through it. Nothing here imports a model
class, so every room of the package may read it.

The older tables (``VARIANTS``, ``STUDY_VARIANTS``, ``ALL_VARIANTS``,
``VIT_CONFIGS``, ``RELEASED_WEIGHTS``, ``MINI_MODEL``) are views of it.
"""

import dataclasses
import difflib
import types
import typing

# Groups, in the order list_models() names them.
GROUPS = ("main", "study", "vit", "mini")
# The model classes a preset may build (``keras_t2t.builders`` maps them to classes).
FAMILIES = ("t2t_vit", "t2t_vit_dense", "vit")
# Where the authors' release files are (``keras_t2t.weights.pretrained`` adds the file name).
RELEASES_URL = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
# The weights tags a release may have: ImageNet-1k at 224, at 384, with Token Labeling
# (Jiang et al. 2021: an extra per-token head, ``aux_head``), and the CIFAR fine-tunings.
WEIGHT_TAGS = ("imagenet", "imagenet_384", "imagenet_token_labeling", "cifar10", "cifar100")


@dataclasses.dataclass(frozen=True)
class Release:
    """One checkpoint file the authors released, and the weights tag it is loaded by."""

    file: str
    image_size: int
    top1: float  # the top-1 the authors report for it: ImageNet-1k val, or the CIFAR test set
    tag: str = "imagenet"
    classes: int = 1000

    def __post_init__(self):
        if self.tag not in WEIGHT_TAGS:
            raise ValueError(f"Release {self.file!r}: tag must be one of {WEIGHT_TAGS}; got {self.tag!r}.")


class WeightsRow(typing.NamedTuple):
    """One row of ``list_weights()``: a released checkpoint of one model."""

    model: str
    tag: str
    file: str
    image_size: int
    classes: int
    top1: float


@dataclasses.dataclass(frozen=True)
class Preset:
    """One buildable model: a name, its class and its architecture."""

    name: str
    family: str
    group: str
    config: types.MappingProxyType
    image_size: int = 224
    weight_decay: float = 0.05
    releases: tuple = ()
    summary: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Preset {self.name!r}: family must be one of {FAMILIES}; got {self.family!r}.")
        if self.group not in GROUPS:
            raise ValueError(f"Preset {self.name!r}: group must be one of {GROUPS}; got {self.group!r}.")
        object.__setattr__(self, "config", types.MappingProxyType(dict(self.config)))
        tags = [r.tag for r in self.releases]
        if len(set(tags)) != len(tags):
            raise ValueError(f"Preset {self.name!r}: each weights tag names one release; got {tags}.")

    def describe(self):
        """One line, e.g. "performer T2T, ghost blocks, embed_dim 384, depth 16, 6 heads, mlp_ratio 3"."""
        c = self.config
        if self.family == "vit":
            return (
                f"{c['patch_size']}x{c['patch_size']} patches, embed_dim {c['embed_dim']}, depth {c['depth']}, "
                f"{c['num_heads']} heads, mlp_ratio {c['mlp_ratio']:g}, qkv_bias {c['qkv_bias']}, "
                f"{c.get('position_embedding', 'learned')} positions"
            )
        block_type = "dense" if self.family == "t2t_vit_dense" else c.get("block_type", "standard")
        parts = [f"{c['t2t_type']} T2T"]
        if block_type != "standard":
            parts.append(f"{block_type} blocks")
        parts.append(f"embed_dim {c['embed_dim']}")
        if block_type == "dense":
            parts.append(f"dense_stages {tuple(c['dense_stages'])}, growth_rate {c['growth_rate']}")
        else:
            parts.append(f"depth {c['depth']}")
        parts.append(f"{c['num_heads']} heads, mlp_ratio {c['mlp_ratio']:g}")
        if "t2t_stages" in c:
            parts.append(f"T2T stages {[tuple(s) for s in c['t2t_stages']]}")
        return ", ".join(parts)


def _t2t(name, t2t_type, embed_dim, depth, num_heads, mlp_ratio, weight_decay=0.05, releases=(), group="main",
         **extra):
    config = dict(t2t_type=t2t_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    config.update(extra)
    return Preset(name, "t2t_vit", group, config, 224, weight_decay, tuple(Release(*r) for r in releases))


_PRESETS = (
    # The main family (spec section 8), with the reference's weight decay (section 12)
    # and the released checkpoints (file, image side, reported top-1[, tag, classes]).
    _t2t("t2t_vit_7", "performer", 256, 7, 4, 2.0, 0.03, [("71.7_T2T_ViT_7.pth.tar", 224, 71.7)]),
    _t2t("t2t_vit_10", "performer", 256, 10, 4, 2.0, 0.03, [("75.2_T2T_ViT_10.pth.tar", 224, 75.2)]),
    _t2t("t2t_vit_12", "performer", 256, 12, 4, 2.0, 0.03, [("76.5_T2T_ViT_12.pth.tar", 224, 76.5)]),
    _t2t("t2t_vit_14", "performer", 384, 14, 6, 3.0, 0.05, [
        ("81.5_T2T_ViT_14.pth.tar", 224, 81.5),
        ("83.3_T2T_ViT_14.pth.tar", 384, 83.3, "imagenet_384"),
        # Fine-tuned from the ImageNet weights by the authors' transfer_learning.py at 224
        # ({'net': state_dict, ...}); "cirfar" is the file's real name.
        ("cifar10_t2t-vit_14_98.3.pth", 224, 98.3, "cifar10", 10),
        ("cirfar100_t2t-vit-14_88.4.pth", 224, 88.4, "cifar100", 100),
    ]),
    _t2t("t2t_vit_19", "performer", 448, 19, 7, 3.0, 0.065, [
        ("81.9_T2T_ViT_19.pth.tar", 224, 81.9),
        ("cifar10_t2t-vit_19_98.4.pth", 224, 98.4, "cifar10", 10),
        ("cifar100_t2t-vit-19_89.0.pth", 224, 89.0, "cifar100", 100),
    ]),
    _t2t("t2t_vit_24", "performer", 512, 24, 8, 3.0, 0.065, [
        ("82.3_T2T_ViT_24.pth.tar", 224, 82.3),
        ("84.2_T2T_ViT_24.pth.tar", 224, 84.2, "imagenet_token_labeling"),
    ]),
    _t2t("t2t_vit_t_14", "transformer", 384, 14, 6, 3.0, 0.05, [("81.7_T2T_ViTt_14.pth.tar", 224, 81.7)]),
    _t2t("t2t_vit_t_19", "transformer", 448, 19, 7, 3.0, 0.065, [("82.4_T2T_ViTt_19.pth.tar", 224, 82.4)]),
    _t2t("t2t_vit_t_24", "transformer", 512, 24, 8, 3.0, 0.065, [("82.6_T2T_ViTt_24.pth.tar", 224, 82.6)]),
    _t2t("t2t_vit_14_resnext", "performer", 384, 14, 32, 3.0),
    _t2t("t2t_vit_14_wide", "performer", 768, 4, 12, 3.0),
    # The paper's backbone studies (spec sections 8 and 9): the same T2T module, other blocks.
    _t2t("t2t_vit_14_se", "performer", 384, 14, 6, 3.0, group="study", block_type="se"),
    _t2t("t2t_vit_16_ghost", "performer", 384, 16, 6, 3.0, group="study", block_type="ghost"),
    Preset(
        "t2t_vit_dense", "t2t_vit_dense", "study",
        dict(t2t_type="performer", embed_dim=128, dense_stages=(3, 6, 6, 4), growth_rate=64, num_heads=8,
             mlp_ratio=2.0),
    ),
    # ViT baselines. vit_small_patch16 is ViT-S as the T2T-ViT authors define it (their
    # models/vit.py: D 768, depth 8, 8 heads, mlp 3, no qkv bias), not DeiT-S;
    # vit_base_patch16 is ViT-B/16 (with the qkv bias of the original ViT); vit_large_patch16 is
    # ViT-L/16, the ViT of the paper's feature figure (Figure 2): 304M weights at 224, too big
    # for the tests' build-every-model loops (tests/models/test_vit_large.py counts it cheaply).
    Preset("vit_small_patch16", "vit", "vit",
           dict(patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False)),
    Preset("vit_base_patch16", "vit", "vit",
           dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True)),
    Preset("vit_large_patch16", "vit", "vit",
           dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True)),
    # The built-in digits default (32x32 inputs, two soft splits of stride 2: 32 -> 16 -> 8,
    # 64 tokens) and its ViT twin: the T2T mini's backbone and position table on 4x4 patches
    # (the same 8x8 = 64 tokens), the MLP widened from 2 to 2.25 so the weight counts match
    # (~37k weights of the T2T module go to the MLPs instead): 577,546 vs 581,856, -0.7%.
    Preset("t2t_vit_mini", "t2t_vit", "mini",
           dict(t2t_type="performer", t2t_stages=((3, 2, 1), (3, 2, 1)), token_dim=32, embed_dim=128, depth=4,
                num_heads=4, mlp_ratio=2.0),
           image_size=32),
    Preset("vit_mini", "vit", "mini",
           dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.25, qkv_bias=False,
                position_embedding="sinusoid"),
           image_size=32),
)

MODELS = types.MappingProxyType({p.name: p for p in _PRESETS})


def unknown_model_error(name, names=None):
    """The ValueError for a name the registry lacks, listing the accepted ones (closest first)."""
    names = list(MODELS) if names is None else list(names)
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"Unknown model {name!r}; accepted: {', '.join(names)}.{hint}")


def get_preset(name):
    """The ``Preset`` of ``name``, or a ValueError naming the accepted names."""
    if name not in MODELS:
        raise unknown_model_error(name)
    return MODELS[name]


def list_weights(model_name=None):
    """Every released checkpoint (or ``model_name``'s) as ``WeightsRow``s, in registry order:
    ``(model, tag, file, image_size, classes, top1)``. ``weights=<tag>`` loads one."""
    presets = _PRESETS if model_name is None else (get_preset(model_name),)
    return [WeightsRow(p.name, r.tag, r.file, r.image_size, r.classes, r.top1) for p in presets for r in p.releases]


def names(*groups):
    """Registered names of the given groups (all when none), in registry order."""
    return [p.name for p in _PRESETS if not groups or p.group in groups]


def _configs(*groups):
    return {p.name: dict(p.config) for p in _PRESETS if p.group in groups}


# Views of the registry under the names the package has always exported.
VARIANTS = _configs("main")
STUDY_VARIANTS = {
    p.name: dict(p.config, block_type="dense" if p.family == "t2t_vit_dense" else p.config["block_type"])
    for p in _PRESETS
    if p.group == "study"
}
ALL_VARIANTS = {**VARIANTS, **STUDY_VARIANTS}
VIT_CONFIGS = {p.name: dict(p.config) for p in _PRESETS if p.family == "vit"}
# The ImageNet-1k releases as (top1, image_size, file); list_weights() has every release.
RELEASED_WEIGHTS = {
    p.name: [(r.top1, r.image_size, r.file) for r in p.releases if r.tag.startswith("imagenet")]
    for p in _PRESETS
    if p.releases
}
MINI_NAME = "t2t_vit_mini"
MINI_MODEL = dict(MODELS[MINI_NAME].config)
