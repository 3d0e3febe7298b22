"""Training and evaluation image transforms, in TensorFlow ops for tf.data (on every backend).

Where each piece of the recipe comes from:

- RandomResizedCrop: ``tf.image.sample_distorted_bounding_box`` fused with
  ``tf.io.decode_and_crop_jpeg`` (only the crop of a JPEG is decoded, the way
  big_vision's ``inception_crop`` does it); keras-cv's and Keras core's crop layers
  work on decoded batches and cannot skip decoding the rest of the image.
- horizontal flip: Keras core's ``RandomFlip`` (``build_batch_augmenter``).
- RandAugment: keras-cv's ``RandAugment``: it has the magnitude noise of timm's
  ``rand-m9-mstd0.5`` (Keras core's has no magnitude noise).
- random erasing and Mixup/CutMix: written here. Keras core's ``RandomErasing``
  samples its probability uniformly in ``[0, factor]`` and has no aspect-ratio
  range; keras-cv has none. Keras core's and keras-cv's MixUp/CutMix draw one
  mixing weight per image; the reference (timm, "batch" mode) draws one per
  batch, pairs each image with its mirror in the batch and picks Mixup or
  CutMix per batch.
"""

import math

import keras
import tensorflow as tf

from keras_t2t.data.images import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

_JPEG_MAGIC = b"\xff\xd8\xff"


def _is_jpeg(data):
    return tf.equal(tf.strings.substr(data, 0, 3), _JPEG_MAGIC)


def decode_image(data):
    """Encoded bytes (JPEG, PNG, GIF, BMP, WebP) or a uint8 image -> (H, W, 3) uint8."""
    if data.dtype == tf.string:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    else:
        image = data
        if image.shape.rank == 2:
            image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    image.set_shape([None, None, 3])
    return image


def _resize(image, size, method):
    # antialias: PIL (what torchvision resizes with) filters when it downsamples.
    out = tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=True)
    return tf.clip_by_value(out, 0.0, 255.0)


def random_resized_crop(data, image_size, scale=(0.08, 1.0), ratio=(0.75, 4.0 / 3.0), interpolation="random"):
    """timm/torchvision RandomResizedCrop; JPEG bytes are cropped while decoding.

    Returns a float32 (size, size, 3) image in [0, 255].
    """
    def sample_box(shape):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
            min_object_covered=0.0,
            aspect_ratio_range=tuple(ratio),
            area_range=tuple(scale),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, size

    if data.dtype == tf.string:
        def jpeg():
            begin, size = sample_box(tf.image.extract_jpeg_shape(data))
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            return tf.io.decode_and_crop_jpeg(data, window, channels=3)

        def other():
            image = decode_image(data)
            begin, size = sample_box(tf.shape(image))
            return tf.slice(image, begin, size)

        crop = tf.cond(_is_jpeg(data), jpeg, other)
    else:
        image = decode_image(data)
        begin, size = sample_box(tf.shape(image))
        crop = tf.slice(image, begin, size)
    crop.set_shape([None, None, 3])
    target = (image_size, image_size)
    if interpolation == "random":
        return tf.cond(
            tf.random.uniform([]) < 0.5,
            lambda: _resize(crop, target, "bilinear"),
            lambda: _resize(crop, target, "bicubic"),
        )
    return _resize(crop, target, interpolation)


def resize_to(data, image_size):
    """Decode and resize to (size, size) without cropping (training without RandomResizedCrop)."""
    image = decode_image(data)
    return _resize(image, (image_size, image_size), "bicubic")


def eval_resize_crop(data, image_size, crop_pct=DEFAULT_CROP_PCT):
    """The evaluation transform of the released weights (spec section 11), in TF ops.

    Shorter side to ``int(image_size / crop_pct)`` (bicubic), center crop
    ``image_size`` with torchvision's rounding. Float32 in [0, 255].
    """
    image = decode_image(data)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.constant(float(math.floor(image_size / crop_pct)), tf.float64)
    # torchvision Resize(int): shorter side -> size, longer side int(size * long / short).
    new_h = tf.where(h <= w, short, tf.floor(short * h / w))
    new_w = tf.where(h <= w, tf.floor(short * w / h), short)
    new_hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    resized = tf.cond(
        tf.reduce_all(tf.equal(new_hw, shape[:2])),
        lambda: tf.cast(image, tf.float32),
        lambda: _resize(image, new_hw, "bicubic"),
    )
    top = tf.cast(tf.round(tf.cast(new_hw[0] - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_hw[1] - image_size, tf.float32) / 2.0), tf.int32)
    out = tf.slice(resized, [top, left, 0], [image_size, image_size, 3])
    out.set_shape([image_size, image_size, 3])
    return out


def normalize(images):
    """[0, 255] -> ImageNet mean/std normalisation (what ``keras_t2t.preprocess_input`` does)."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def random_erasing(images, probability=0.25, area=(0.02, 1.0 / 3.0), log_ratio=(math.log(0.3), math.log(1 / 0.3)),
                   attempts=10):
    """timm's RandomErasing (mode "pixel", one box) on a normalised batch (B, H, W, C).

    Each image, with ``probability``: up to ``attempts`` draws of a box of area
    ``uniform(area) * H * W`` and aspect ``exp(uniform(log_ratio))``; the first
    that fits is filled with standard-normal noise per pixel and channel.
    """
    if probability <= 0:
        return images
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    target = tf.random.uniform([batch, attempts], area[0], area[1]) * hf * wf
    aspect = tf.exp(tf.random.uniform([batch, attempts], log_ratio[0], log_ratio[1]))
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    pick = tf.stack([tf.range(batch), first], axis=1)
    box_h, box_w = tf.gather_nd(box_h, pick), tf.gather_nd(box_w, pick)
    apply = tf.reduce_any(fits, axis=1) & (tf.random.uniform([batch]) < probability)
    top = tf.cast(tf.floor(tf.random.uniform([batch]) * tf.cast(height - box_h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(tf.random.uniform([batch]) * tf.cast(width - box_w + 1, tf.float32)), tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    mask = (
        (rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
        & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
        & apply[:, None, None]
    )
    noise = tf.random.normal(tf.shape(images), dtype=images.dtype)
    return tf.where(mask[..., None], noise, images)


def _sample_beta(alpha):
    a = tf.random.gamma([], alpha)
    b = tf.random.gamma([], alpha)
    return a / (a + b)


def cutmix_box(height, width, lam):
    """timm's ``rand_bbox`` + ``correct_lam``: the box and the area-corrected weight."""
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    cy = tf.random.uniform([], 0, height, dtype=tf.int32)
    cx = tf.random.uniform([], 0, width, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
    lam = 1.0 - area / tf.cast(height * width, tf.float32)
    return (y0, y1, x0, x1), lam


def mix_batch(images, labels, lam, use_cutmix, box=None):
    """Mixes each image/label with its mirror in the batch (timm's ``x.flip(0)``)."""
    mirror_images = tf.reverse(images, axis=[0])
    mirror_labels = tf.reverse(labels, axis=[0])
    if use_cutmix:
        y0, y1, x0, x1 = box
        shape = tf.shape(images)
        rows = tf.range(shape[1])[:, None]
        cols = tf.range(shape[2])[None, :]
        inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        mixed = tf.where(inside[None, :, :, None], mirror_images, images)
    else:
        mixed = images * lam + mirror_images * (1.0 - lam)
    return mixed, labels * lam + mirror_labels * (1.0 - lam)


def mixup_cutmix(images, labels, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5):
    """timm's Mixup in "batch" mode: one weight per batch, Mixup or CutMix chosen per batch.

    ``labels`` are (already smoothed) one-hot rows; the result keeps their sum.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return images, labels
    shape = tf.shape(images)

    def do_mixup():
        lam = _sample_beta(mixup_alpha)
        return mix_batch(images, labels, lam, use_cutmix=False)

    def do_cutmix():
        box, lam = cutmix_box(shape[1], shape[2], _sample_beta(cutmix_alpha))
        return mix_batch(images, labels, lam, use_cutmix=True, box=box)

    if mixup_alpha > 0 and cutmix_alpha > 0:
        mixed = tf.cond(tf.random.uniform([]) < switch_prob, do_cutmix, do_mixup)
    elif cutmix_alpha > 0:
        mixed = do_cutmix()
    else:
        mixed = do_mixup()
    if prob >= 1.0:
        return mixed
    return tf.cond(tf.random.uniform([]) < prob, lambda: mixed, lambda: (images, labels))


def build_randaugment(recipe):
    """keras-cv's RandAugment configured as timm's ``rand-m{M}-mstd{S}`` (None when off)."""
    if recipe.randaugment_ops <= 0:
        return None
    try:
        import keras_cv
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "RandAugment comes from keras-cv: pip install 'keras-cv==0.9.0' "
            "(or switch it off with --randaugment-ops 0)."
        ) from error
    return keras_cv.layers.RandAugment(
        value_range=(0, 255),
        augmentations_per_image=int(recipe.randaugment_ops),
        magnitude=recipe.randaugment_magnitude / 10.0,
        magnitude_stddev=recipe.randaugment_magnitude_std / 10.0,
        rate=recipe.randaugment_rate,
        seed=recipe.seed,
    )


def build_flip(recipe):
    if recipe.hflip <= 0:
        return None
    if recipe.hflip != 0.5:
        raise ValueError("Keras' RandomFlip flips with probability 0.5; use --hflip 0.5 or 0.")
    return keras.layers.RandomFlip("horizontal", seed=recipe.seed)
