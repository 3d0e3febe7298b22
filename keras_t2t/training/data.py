"""Training and validation input: tf.data on every backend.

Three sources, one pipeline: an ImageNet-style folder (``train/<class>/*``,
``val/<class>/*``, the authors' layout), any TensorFlow Datasets name, and the
built-in digits, written once as such a folder and read like a user's. Every
check (missing or empty folders, classes that differ between splits, files that
are not images or do not decode, an unknown dataset name) runs in
``resolve_data``, before a model is built: every image of a folder is decoded
once (``image_check``, remembered for the next runs).

Images travel as encoded bytes until the training map decodes them (JPEGs
decode only their random crop); the bytes are cached in memory when they fit.
"""

import concurrent.futures
import dataclasses
import difflib
import os
import warnings

import numpy as np

from keras_t2t.data.digits import default_digits_dir, write_digits_folder
from keras_t2t.data.images import list_image_folder
from keras_t2t.training.image_check import find_bad_images

# Formats tf.io.decode_image reads, by their first bytes.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
CACHE_LIMIT_BYTES = 2 << 30  # "auto" caches the encoded training images below this size
VAL_CACHE_LIMIT_BYTES = 1 << 30


@dataclasses.dataclass
class DataSource:
    """A resolved dataset: what it is, how big, and how to read each split."""

    name: str
    kind: str  # "folder" or "tfds"
    class_names: list
    num_train: int
    num_val: int
    train_bytes: int = 0  # encoded size estimate (0: unknown)
    root: str = ""
    train_files: tuple = ()
    val_files: tuple = ()
    tfds_builder: object = None
    train_split: str = ""
    val_split: str = ""
    skipped: tuple = ()  # (path, reason) of the bad images left out (skip_bad_images)

    @property
    def num_classes(self):
        return len(self.class_names)

    def describe(self):
        where = self.root or self.name
        left_out = f"; {len(self.skipped)} bad images left out" if self.skipped else ""
        return (
            f"{self.name} ({self.kind}, {where}): {self.num_classes} classes, "
            f"{self.num_train} training and {self.num_val} validation images{left_out}"
        )

    def examples(self, split, limit=0, shuffle_seed=None):
        """tf.data of (encoded image bytes, int32 label), in a fixed order unless ``shuffle_seed``.

        ``limit`` keeps that many: an evenly spaced subset of a folder's sorted
        listing (so every class is in it), the first ones of a TFDS split. With
        ``shuffle_seed`` a folder's file list is shuffled completely every epoch
        (before any file is read) and a TFDS split's files are shuffled.
        """
        import tensorflow as tf

        if self.kind == "folder":
            paths, labels = self.train_files if split == "train" else self.val_files
            if limit and limit < len(paths):
                keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
                paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
            ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, "int32")))
            if shuffle_seed is not None:
                ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
            return ds.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
        import tensorflow_datasets as tfds

        name = self.train_split if split == "train" else self.val_split
        ds = self.tfds_builder.as_dataset(
            split=name,
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False, shuffle_seed=shuffle_seed),
        )
        if limit:
            ds = ds.take(limit)
        return ds.map(lambda e: (e["image"], tf.cast(e["label"], tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------
def _sniff(path):
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not head:
        return "is empty"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return None
    if any(head.startswith(magic) for magic, _ in _MAGIC):
        return None
    return "is not a JPEG, PNG, GIF, BMP or WebP image"


def unusable_images(paths, verify=False, workers=8):
    """``[(path, reason)]`` of the files whose first bytes are not an image TensorFlow reads.

    Only the first bytes are read (cheap for a million files); ``verify`` also
    decodes each with Pillow (``image_check`` decodes with TensorFlow's decoders).
    """
    def check(path):
        problem = _sniff(path)
        if problem is None and verify:
            from PIL import Image

            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file
                problem = f"does not decode ({error})"
        return problem

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [(p, r) for p, r in zip(paths, pool.map(check, paths, chunksize=256)) if r]


def _refuse(problems, total):
    shown = "\n".join(f"  {p}: {r}" for p, r in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise ValueError(
        f"{len(problems)} of {total} image files cannot be used:\n{shown}{more}\n"
        "Remove or convert them (TensorFlow decodes JPEG, PNG, GIF, BMP and WebP), or train without them "
        "(--skip-bad-images; keras_t2t.training.train(..., skip_bad_images=True))."
    )


def scan_image_folder(root, verify_images=False, skip_bad_images=False):
    """Checks ``root/train/<class>/*`` and ``root/val/<class>/*``; returns a folder DataSource.

    Every image is decoded once, with TensorFlow's decoders; the result is kept
    per class folder (by file names, sizes and modification times) so a second
    scan decodes only what changed, unless ``verify_images`` asks to decode all
    again. Files that are not images or do not decode are an error naming them,
    or with ``skip_bad_images`` are left out (``DataSource.skipped``).
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"Data folder {root!r} does not exist or is not a folder.")
    splits = {}
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise ValueError(
                f"Data folder {root!r} has no {split}/ sub-folder; expected the ImageNet layout "
                f"{root}/train/<class>/<images> and {root}/val/<class>/<images>."
            )
        splits[split] = list_image_folder(folder)
    train_classes, val_classes = splits["train"][2], splits["val"][2]
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"The train and val folders of {root!r} hold different classes "
            f"(only in train: {only_train[:10] or 'none'}; only in val: {only_val[:10] or 'none'}). "
            "Both splits need one sub-folder per class, with the same names."
        )
    if len(train_classes) < 2:
        raise ValueError(f"Data folder {root!r} has {len(train_classes)} class; a classifier needs at least 2.")
    counts = np.bincount(splits["train"][1], minlength=len(train_classes))
    if counts.max() > 10 * counts.min():
        warnings.warn(
            f"The training classes of {root!r} are unbalanced: {counts.min()} to {counts.max()} images "
            f"(smallest: {train_classes[int(counts.argmin())]!r}).",
            stacklevel=2,
        )
    all_paths = splits["train"][0] + splits["val"][0]
    problems = unusable_images(all_paths)
    headers_bad = {p for p, _ in problems}
    decoded = find_bad_images(root, [p for p in all_paths if p not in headers_bad], refresh=verify_images)
    problems = sorted(problems + list(decoded.items()))
    if problems and not skip_bad_images:
        _refuse(problems, len(all_paths))
    bad = {p for p, _ in problems}
    for split in ("train", "val"):
        paths, labels, names = splits[split]
        kept = [(p, y) for p, y in zip(paths, labels) if p not in bad]
        if not kept:
            raise ValueError(f"No image of {root}/{split} decodes ({len(paths)} bad); nothing to train or validate on.")
        splits[split] = ([p for p, _ in kept], [y for _, y in kept], names)
    train_bytes = sum(os.path.getsize(p) for p in splits["train"][0])
    return DataSource(
        name=os.path.basename(root) or root,
        kind="folder",
        class_names=train_classes,
        num_train=len(splits["train"][0]),
        num_val=len(splits["val"][0]),
        train_bytes=train_bytes,
        root=root,
        train_files=(tuple(splits["train"][0]), tuple(splits["train"][1])),
        val_files=(tuple(splits["val"][0]), tuple(splits["val"][1])),
        skipped=tuple(problems),
    )


def _tfds_source(name, data_dir="", manual_dir="", train_split="train", val_split="", download=True):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "TFDS datasets need tensorflow-datasets: pip install 'keras-t2t[train]' (or "
            "'tensorflow-datasets>=4.9,<4.10' importlib-resources)."
        ) from error
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown dataset {name!r}: not 'digits', not 'folder' and not a TensorFlow Datasets name.{hint} "
            "Use --dataset folder --data-dir DIR for an ImageNet-style folder."
        ) from None
    if not _tfds_prepared(builder):
        if not download:
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and downloading is off "
                "(--no-download)."
            )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
        builder.download_and_prepare(download_config=config)
    info = builder.info
    features = info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' and 'label' features; it is not image classification.")
    splits = info.splits
    val_split = val_split or ("validation" if "validation" in splits else "test")
    for split in (train_split, val_split):
        if split.split("[")[0] not in splits:
            raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has {', '.join(splits)}.")
    label = features["label"]
    names = list(label.names) if getattr(label, "names", None) else [str(i) for i in range(label.num_classes)]
    return DataSource(
        name=name,
        kind="tfds",
        class_names=names,
        num_train=int(splits[train_split].num_examples),
        num_val=int(splits[val_split].num_examples),
        train_bytes=int(getattr(splits[train_split], "num_bytes", 0) or 0),
        tfds_builder=builder,
        train_split=train_split,
        val_split=val_split,
    )


def _tfds_prepared(builder):
    try:
        return builder.is_prepared()
    except AttributeError:  # older TFDS
        import tensorflow as tf

        return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def resolve_data(recipe, download=True, verify_images=False, skip_bad_images=False):
    """The recipe's dataset, checked: ``digits``, ``folder`` (``recipe.data_dir``) or a TFDS name.

    Folders are checked by ``scan_image_folder`` (``verify_images``, ``skip_bad_images``).
    """
    dataset = recipe.dataset
    if dataset == "digits":
        if recipe.image_size % 8:
            raise ValueError(f"The digits are 8x8 scans: image_size must be a multiple of 8; got {recipe.image_size}.")
        root = write_digits_folder(recipe.data_dir or default_digits_dir(), image_size=32)
        source = scan_image_folder(root, verify_images=verify_images, skip_bad_images=skip_bad_images)
        source.name = "digits"
        return source
    if dataset == "folder":
        if not recipe.data_dir:
            raise ValueError("--dataset folder needs --data-dir DIR (with DIR/train/<class>/* and DIR/val/<class>/*).")
        return scan_image_folder(recipe.data_dir, verify_images=verify_images, skip_bad_images=skip_bad_images)
    return _tfds_source(dataset, recipe.data_dir, recipe.manual_dir, recipe.train_split, recipe.val_split, download)


# ----------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------
def _options(deterministic):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _cached(ds, cache, fits):
    if cache == "none" or (cache == "auto" and not fits):
        return ds
    return ds.cache("" if cache in ("auto", "memory") else cache)


def train_dataset(source, recipe, batch_size, num_shards=1, shard_index=0, seed=None):
    """Endless batches of (normalised float32 images, soft labels) for ``model.fit``.

    ``batch_size`` is the batch this pipeline yields (the per-replica batch when
    tf.distribute calls it once per input pipeline). Batches are complete
    (``drop_remainder``) so every step sees the same shape.
    """
    import tensorflow as tf

    from keras_t2t.training import augment
    from keras_t2t.training.optimizers import smooth_labels

    seed = recipe.seed if seed is None else seed
    classes = source.num_classes
    size = recipe.image_size
    count = min(source.num_train, recipe.train_limit) if recipe.train_limit else source.num_train
    fits = bool(source.train_bytes) and source.train_bytes * count / max(source.num_train, 1) < CACHE_LIMIT_BYTES
    cached = recipe.cache not in ("none",) and (recipe.cache != "auto" or fits)
    # Cached bytes are shuffled in memory; otherwise the file list is shuffled before reading.
    early_shuffle = recipe.shuffle and not cached
    ds = source.examples("train", recipe.train_limit, shuffle_seed=seed if early_shuffle else None)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
        count //= num_shards
    ds = _cached(ds, recipe.cache, fits)
    if recipe.shuffle and cached:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    elif recipe.shuffle and source.kind == "tfds":
        ds = ds.shuffle(min(count, 10_000), seed=seed, reshuffle_each_iteration=True)  # on top of file shuffling
    ds = ds.repeat()

    def per_image(data, label):
        if recipe.random_resized_crop:
            image = augment.random_resized_crop(data, size, recipe.crop_scale, recipe.crop_ratio, recipe.interpolation)
        else:
            image = augment.resize_to(data, size)
        return image, label

    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    flip = augment.build_flip(recipe)
    randaugment = augment.build_randaugment(recipe)

    def per_batch(images, labels):
        if flip is not None:
            images = flip(images, training=True)
        if randaugment is not None:
            images = tf.clip_by_value(tf.cast(randaugment(images, training=True), tf.float32), 0.0, 255.0)
        images = augment.normalize(images)
        images = augment.random_erasing(images, recipe.random_erasing)
        targets = smooth_labels(tf.one_hot(labels, classes), recipe.label_smoothing)
        images, targets = augment.mixup_cutmix(
            images, targets, recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mixup_prob, recipe.mixup_switch_prob
        )
        return images, targets

    ds = ds.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic=not recipe.shuffle))


def steps_per_epoch(source, recipe, global_batch_size):
    count = min(source.num_train, recipe.train_limit) if recipe.train_limit else source.num_train
    steps = count // global_batch_size
    if steps < 1:
        raise ValueError(
            f"The global batch size {global_batch_size} is larger than the {count} training images; "
            "use a smaller --batch-size."
        )
    return steps


def val_dataset(source, recipe, batch_size, pad_multiple=None):
    """Batches of (images, one-hot labels, sample weights) with the evaluation transform.

    The last batch is padded to ``pad_multiple`` (default ``batch_size``) with
    weight-0 images, so every batch splits evenly over replicas and devices and
    the metrics count each real image exactly once.
    """
    import tensorflow as tf

    from keras_t2t.training import augment

    classes = source.num_classes
    size = recipe.image_size
    ds = source.examples("val", recipe.val_limit)
    count = min(source.num_val, recipe.val_limit) if recipe.val_limit else source.num_val
    ds = ds.map(
        lambda data, label: (tf.cast(tf.round(augment.eval_resize_crop(data, size, recipe.eval_crop_pct)), tf.uint8),
                             label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = _cached(ds, recipe.cache, count * size * size * 3 < VAL_CACHE_LIMIT_BYTES)
    pad_multiple = pad_multiple or batch_size
    padded = -(-count // pad_multiple) * pad_multiple
    ds = ds.map(lambda image, label: (image, label, tf.constant(1.0)))
    if padded > count:
        blank = tf.data.Dataset.from_tensors((tf.zeros([size, size, 3], tf.uint8), tf.constant(0, tf.int32),
                                              tf.constant(0.0))).repeat(padded - count)
        ds = ds.concatenate(blank)
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda x, y, w: (augment.normalize(x), tf.one_hot(y, classes), w),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic=True))
