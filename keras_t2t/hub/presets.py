"""KerasHub presets: every released checkpoint as ``<model>_<tag>``, converted once into a preset folder.

``t2t_vit_14_imagenet`` is ``t2t_vit_14``'s ``"imagenet"`` release (``list_presets()``
names them all). ``preset_folder(name)`` fetches the authors' file once (the
mirror and the SHA-256 checks of ``keras_t2t.weights.pretrained``), converts it
once into ``$KERAS_HOME/keras_t2t/presets/<name>/`` (KerasHub's ``config.json``,
``model.weights.h5``, ``task.json``, ``task.weights.h5``, ``preprocessor.json``
and a ``metadata.json`` naming the source URL, its SHA-256 and the release's
top-1), and from then on only that folder is read: through KerasHub's own
loader, as any preset. The folder appears whole or not at all.

Reading and writing preset folders (``save_preset``, ``load_classic``, ...) lives in
``keras_t2t.hub.preset_files``.
"""

import difflib
import os

from keras_t2t.data.images import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.hub.backbone import T2TViTBackbone
from keras_t2t.hub.classifier import T2TViTImageClassifier
from keras_t2t.hub.preset_files import (
    CHECKED_FILES,
    architecture,
    make_preprocessor,
    read_preset,
    recorded_problem,
    save_preset,
    stale_patterns,
)
from keras_t2t.io_utils import check_output_folder, read_json_object, remove_stale_temporaries
from keras_t2t.models.presets import get_preset, list_weights
from keras_t2t.weights import pretrained
from keras_t2t.weights.loading import load_state_dict
from keras_t2t.weights.mapping import model_state_dict

# The authors evaluate every ImageNet release with crop_pct 0.9 at its own size (spec section 11). Their
# transfer_learning.py tests the CIFAR fine-tunes on the 32x32 images resized whole to 224 (torchvision's
# Resize: bilinear, no crop) and normalised with CIFAR's own mean and std.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
TAG_PREPROCESSING = {tag: (1.0, CIFAR_MEAN, CIFAR_STD, "bilinear") for tag in ("cifar10", "cifar100")}


def _release_presets():
    return {f"{row.model}_{row.tag}": row for row in list_weights()}


def list_presets():
    """The names of every released checkpoint as a preset, in registry order (``t2t_vit_7_imagenet``, ...)."""
    return list(_release_presets())


def is_preset_name(handle):
    return isinstance(handle, str) and handle in _release_presets()


def preset_release(name):
    """The ``WeightsRow`` (model, tag, file, image_size, classes, top1) a preset name stands for."""
    rows = _release_presets()
    if name not in rows:
        close = difflib.get_close_matches(str(name), list(rows), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"Unknown preset {name!r}{hint}; accepted: {', '.join(rows)}, or a preset folder.")
    return rows[name]


def release_preprocessing(row):
    """(image_size, crop_pct, mean, std, interpolation) the authors evaluate a release with."""
    return (row.image_size, *TAG_PREPROCESSING.get(row.tag, (DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD,
                                                              "bicubic")))


def preset_folder(name):
    """The cached preset folder of a release preset name, fetched and converted when needed."""
    folder, _ = convert_release(name)
    return folder


def _problem(folder):
    """Why a cached conversion cannot be used (None when it can): missing, half-written or changed since."""
    if not os.path.isdir(folder):
        return "missing"
    try:
        problem = recorded_problem(folder)
        if problem is None:
            read_preset(folder)
    except ValueError:
        return "is incomplete or damaged"
    if problem is None and not all(os.path.isfile(os.path.join(folder, name)) for name in CHECKED_FILES):
        return "is incomplete"
    return problem


def _other_preprocessing(folder, row):
    """Why the cached preset's preprocessing is not the release's (an older conversion), or None."""
    try:
        converter = read_json_object(os.path.join(folder, "preprocessor.json"), "preprocessor")
        converter = converter["config"]["image_converter"]["config"]
        saved = (float(converter["crop_pct"]), tuple(converter["mean"]), tuple(converter["std"]),
                 converter["interpolation"])
    except (OSError, ValueError, KeyError, TypeError):
        return "holds no readable preprocessing"
    _, crop_pct, mean, std, interpolation = release_preprocessing(row)
    if saved != (crop_pct, tuple(mean), tuple(std), interpolation):
        return "holds another preprocessing than the release's (an older conversion)"
    return None


def convert_release(name, build=None):
    """``(folder, model or None)``: the preset's folder, and the model built to convert it (first time only).

    ``build(name, arch, classes, token_labeling, preprocessor)`` makes the model the release is
    read into (a ``T2TViTImageClassifier`` unless given: the classic builders pass a ``T2TViT``),
    so a first load builds one model and hands it back.
    """
    row = preset_release(name)
    folder = pretrained.preset_cache_folder(row.model, row.tag)
    parent = os.path.dirname(folder)
    if os.path.isdir(parent):  # what killed conversions or replacements left, whatever their age
        remove_stale_temporaries(parent, stale_patterns(folder), older_than=0.0)
    problem = _problem(folder) or _other_preprocessing(folder, row)
    if problem is None:
        return folder, None
    if problem != "missing":
        print(f"keras_t2t: the cached preset {folder} {problem}; not trusted, converting it again.")
    try:
        check_output_folder(parent, "The presets cache ($KERAS_HOME/keras_t2t/presets)")
    except ValueError as error:
        raise pretrained.WeightsFetchError(f"{error} Set KERAS_HOME to a writable folder.") from None
    checkpoint, state = pretrained.checked_checkpoint(row.model, row.tag)
    preset = get_preset(row.model)
    arch = dict(preset.config, image_shape=(row.image_size, row.image_size, 3))
    if preset.family == "t2t_vit_dense":
        arch["block_type"] = "dense"
    preprocessing = release_preprocessing(row)
    print(f"keras_t2t: converting {os.path.basename(checkpoint)} into the KerasHub preset {folder}")
    model = (build or _build_classifier)(row.model, arch, row.classes, "aux_head.weight" in state,
                                         make_preprocessor(preprocessing))
    load_state_dict(model, state)
    metadata = {
        "keras_t2t_preset": name,
        "model": row.model,
        "tag": row.tag,
        "source_file": row.file,
        "source_url": pretrained.read_index().get(row.file, {}).get("source"),
        "source_sha256": pretrained.sha256_of(checkpoint),
        "top1": row.top1,
        "top1_source": "the authors' reported top-1 (ImageNet-1k val, or the CIFAR test set)",
    }
    return save_preset(model, folder, preprocessing=preprocessing, metadata=metadata,
                       checked=CHECKED_FILES), model


def _build_classifier(name, arch, classes, token_labeling, preprocessor):
    backbone = T2TViTBackbone(name=f"{name}_backbone", **arch)
    return T2TViTImageClassifier(backbone, classes, preprocessor=preprocessor, token_labeling_head=token_labeling,
                                 name=name)


def _local_or_named(handle):
    """``handle`` as KerasHub should read it: a release preset's cache folder (converted when needed),
    a folder, or a KerasHub handle (``hf://``, ``kaggle://``); a misspelled release name is refused
    naming the closest one, not with KerasHub's list of its own models."""
    handle = os.fspath(handle)
    if is_preset_name(handle):
        return convert_release(handle)
    if os.path.exists(handle) or "://" in handle:
        if os.path.isdir(handle):
            read_preset(handle)  # its recorded SHA-256 checked, another model's preset refused, in one line
        return handle, None
    preset_release(handle)  # raises, naming the closest release preset
    return handle, None


def load_classifier(handle, image_shape=None, load_weights=True, **kwargs):
    """``T2TViTImageClassifier`` from a preset name or folder; see ``T2TViTImageClassifier.from_preset``."""
    handle, model = _local_or_named(handle)  # the first time, the converted model itself: built once
    if model is None or kwargs or not load_weights:
        model = T2TViTImageClassifier.load_preset_folder(handle, load_weights=load_weights, **kwargs)
    return at_image_shape(model, image_shape)


def at_image_shape(model, image_shape):
    """``model`` itself, or a copy built at ``image_shape`` with its position table resized (bicubic,
    as the authors resize it) and its preprocessor's size changed to match."""
    if image_shape is None or tuple(image_shape) == tuple(model.image_shape):
        return model
    backbone = model.backbone
    arch = architecture(backbone)
    if len(tuple(image_shape)) == 3 and image_shape[2] != backbone.image_shape[2]:
        raise ValueError(f"image_shape {tuple(image_shape)} has {image_shape[2]} channels; this preset takes "
                         f"{backbone.image_shape[2]} (its first soft split's weights are for that many).")
    arch["image_shape"] = tuple(image_shape)
    preprocessor = model.preprocessor
    if preprocessor is not None:
        converter = preprocessor.image_converter
        preprocessor = make_preprocessor((tuple(image_shape[:2]), converter.crop_pct, converter.mean, converter.std,
                                          converter.interpolation))
    new = T2TViTImageClassifier(T2TViTBackbone(name=backbone.name, dtype=backbone.dtype_policy, **arch),
                                model.num_classes, preprocessor=preprocessor, pooling=model.pooling,
                                activation=model.activation, token_labeling_head=model.token_labeling_head,
                                name=model.name, dtype=model.dtype_policy)
    load_state_dict(new, model_state_dict(model))
    return new


def load_backbone(handle, image_shape=None, load_weights=True, **kwargs):
    """``T2TViTBackbone`` from a preset name or folder; see ``T2TViTBackbone.from_preset``."""
    handle, model = _local_or_named(handle)
    if model is not None and not kwargs and image_shape is None and load_weights:
        return model.backbone
    if image_shape is not None:
        return load_classifier(handle, image_shape=image_shape, load_weights=load_weights, **kwargs).backbone
    return T2TViTBackbone.load_preset_folder(handle, load_weights=load_weights, **kwargs)
