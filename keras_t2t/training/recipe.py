"""The training recipe as data: one flat, printable, JSON-saveable record.

``PAPER`` is the reference's ImageNet recipe (spec section 12); ``DIGITS`` is
the light recipe the no-download default uses. A run is a ``Recipe`` plus the
generic trainer (``keras_t2t.training.trainer``): nothing model-specific lives
in the trainer, everything tunable lives here.
"""

import dataclasses

from keras_t2t.models.presets import MINI_MODEL, MINI_NAME, MODELS  # noqa: F401  (MINI_MODEL: re-exported)

INTERPOLATIONS = ("random", "bilinear", "bicubic")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class Recipe:
    """Everything a training run is, except where its files go."""

    # --- model ---
    model: str = "t2t_vit_14"  # a keras_t2t variant name, or "t2t_vit_mini"
    image_size: int = 224
    drop_path_rate: float = 0.1
    t2t_dropout: float = -1.0  # -1: the reference's (0.1 performer, 0 transformer)
    # --- data ---
    dataset: str = "imagenet2012"  # "digits", "folder", or a TFDS name
    data_dir: str = ""  # folder root (folder/digits) or TFDS data_dir
    manual_dir: str = ""  # TFDS manual download folder (imagenet2012)
    train_split: str = "train"
    val_split: str = ""  # "" = "validation" if the dataset has it, else "test"
    cache: str = "auto"  # "auto", "memory", "none", or a file path prefix
    train_limit: int = 0  # use only the first N training images (0: all); for smoke runs
    val_limit: int = 0
    shuffle: bool = True
    # --- optimisation ---
    epochs: int = 300  # cosine epochs; cool-down epochs come after
    cooldown_epochs: int = 10
    batch_size: int = 512  # global, split across replicas
    lr: float = 5e-4  # for a global batch of lr_base_batch
    lr_base_batch: int = 512
    warmup_epochs: float = 10.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    lr_per_epoch: bool = False  # True: timm's per-epoch steps; False: per optimizer step
    weight_decay: float = -1.0  # -1: the reference's value for the variant
    no_decay_bias_norm_cls: bool = True
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    clip_grad_norm: float = 0.0  # 0: no clipping (the reference does not clip)
    ema_decay: float = 0.99996  # 0: no EMA
    # --- regularisation and augmentation ---
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment_ops: int = 2  # 0: no RandAugment
    randaugment_magnitude: float = 9.0  # timm's 0..10 scale
    randaugment_magnitude_std: float = 0.5
    randaugment_rate: float = 0.5
    random_erasing: float = 0.25
    crop_scale: tuple = (0.08, 1.0)  # None-like (1, 1): no random crop
    crop_ratio: tuple = (0.75, 4.0 / 3.0)
    random_resized_crop: bool = True
    interpolation: str = "random"  # RandomResizedCrop's resize: random bilinear/bicubic
    hflip: float = 0.5
    eval_crop_pct: float = 0.9
    # --- execution ---
    precision: str = "float32"
    jit_compile: str = "auto"  # "auto", "true", "false"
    seed: int = 0

    # ------------------------------------------------------------------
    def validate(self):
        """Raises ValueError naming the first bad field."""
        def positive(name):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}.")

        def fraction(name, upper=1.0, closed=True):
            v = getattr(self, name)
            if not (0.0 <= v <= upper if closed else 0.0 <= v < upper):
                raise ValueError(f"{name} must be in [0, {upper}{']' if closed else ')'}; got {v!r}.")

        for name in ("image_size", "epochs", "batch_size", "lr", "lr_base_batch"):
            positive(name)
        for name in ("cooldown_epochs", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad_norm",
                     "mixup_alpha", "cutmix_alpha", "randaugment_ops"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}.")
        for name in ("label_smoothing", "mixup_prob", "mixup_switch_prob", "random_erasing", "hflip",
                     "randaugment_rate"):
            fraction(name)
        fraction("drop_path_rate", closed=False)
        fraction("ema_decay", closed=False)
        if not 0.0 <= self.randaugment_magnitude <= 10.0:
            raise ValueError(f"randaugment_magnitude is on timm's 0..10 scale; got {self.randaugment_magnitude!r}.")
        if not 0.0 <= self.randaugment_magnitude_std <= 10.0:
            raise ValueError(f"randaugment_magnitude_std must be in [0, 10]; got {self.randaugment_magnitude_std!r}.")
        if not 0.0 < self.eval_crop_pct <= 1.0:
            raise ValueError(f"eval_crop_pct must be in (0, 1]; got {self.eval_crop_pct!r}.")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must be 0 < min <= max <= 1; got {self.crop_scale!r}.")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must be 0 < min <= max; got {self.crop_ratio!r}.")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}).")
        if self.hflip not in (0.0, 0.5):
            raise ValueError(f"hflip must be 0 or 0.5 (Keras' RandomFlip flips half the images); got {self.hflip!r}.")
        if self.train_limit < 0 or self.val_limit < 0:
            raise ValueError("train_limit and val_limit must be >= 0 (0: all images).")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {self.interpolation!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}.")
        if str(self.jit_compile).lower() not in ("auto", "true", "false"):
            raise ValueError(f"jit_compile must be auto, true or false; got {self.jit_compile!r}.")
        if self.t2t_dropout != -1.0:
            fraction("t2t_dropout", closed=False)
        if self.weight_decay != -1.0 and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 (or -1 for the variant's); got {self.weight_decay!r}.")
        return self

    def resolved(self):
        """A copy with the "-1 = the reference's value" fields filled in."""
        out = dataclasses.replace(self)
        if out.weight_decay == -1.0:
            # The reference's weight decay per variant (spec section 12), a hint of the registry.
            out.weight_decay = MODELS[out.model].weight_decay if out.model in MODELS else 0.05
        out.crop_scale = tuple(float(v) for v in out.crop_scale)
        out.crop_ratio = tuple(float(v) for v in out.crop_ratio)
        return out.validate()

    @property
    def total_epochs(self):
        return int(self.epochs + self.cooldown_epochs)

    def scaled_lr(self):
        """Peak learning rate for this global batch (linear scaling, spec section 12)."""
        return self.lr * self.batch_size / self.lr_base_batch

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(d["crop_scale"])
        d["crop_ratio"] = list(d["crop_ratio"])
        return d

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown recipe fields: {', '.join(unknown)}.")
        data = dict(data)
        for key in ("crop_scale", "crop_ratio"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def diff(self, other):
        """{field: (self value, other value)} where two recipes differ."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}

    def augmentation_summary(self):
        """One line: which regularisers and augmentations are on, and where each comes from."""
        def on(flag, name, detail=""):
            return f"{name} {detail}".strip() if flag else f"{name} off"

        parts = [
            on(self.random_resized_crop, "RandomResizedCrop (tf.image)",
               f"scale={list(self.crop_scale)} {self.interpolation}"),
            on(self.hflip > 0, "flip (Keras RandomFlip)"),
            on(self.randaugment_ops > 0, "RandAugment (keras-cv)",
               f"n={self.randaugment_ops} m={self.randaugment_magnitude:g} mstd={self.randaugment_magnitude_std:g}"),
            on(self.random_erasing > 0, "random erasing", f"p={self.random_erasing:g}"),
            on(self.mixup_alpha > 0 or self.cutmix_alpha > 0, "Mixup/CutMix",
               f"alpha={self.mixup_alpha:g}/{self.cutmix_alpha:g}"),
            f"label smoothing {self.label_smoothing:g}",
            f"drop path {self.drop_path_rate:g}",
            on(self.ema_decay > 0, "EMA", f"{self.ema_decay:g}"),
        ]
        return "; ".join(parts)

    def describe(self):
        lines = []
        for key, value in self.to_dict().items():
            lines.append(f"  {key:28s} {value}")
        return "\n".join(lines)


PAPER = Recipe()

# The built-in default: 1,437 training digits on a 2-core CPU in minutes. The
# paper's heavy regularisation (Mixup/CutMix, RandAugment, erasing, a 0.99996 EMA
# over a few hundred steps) slows convergence this small, so it is switched off;
# the schedule, AdamW with the decay exclusions and label smoothing stay.
DIGITS = dataclasses.replace(
    PAPER,
    model=MINI_NAME,
    image_size=32,
    drop_path_rate=0.1,
    dataset="digits",
    epochs=18,
    cooldown_epochs=2,
    batch_size=64,
    lr=2e-3,
    lr_base_batch=64,
    warmup_epochs=1.0,
    min_lr=1e-5,
    weight_decay=0.05,
    ema_decay=0.0,
    label_smoothing=0.1,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    randaugment_ops=0,
    random_erasing=0.0,
    random_resized_crop=False,
    hflip=0.0,
    eval_crop_pct=1.0,
)

PRESETS = {"paper": PAPER, "digits": DIGITS}


