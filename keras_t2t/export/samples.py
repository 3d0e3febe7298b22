"""The images an export is verified and calibrated on: a folder, a TFDS dataset, or scikit-learn's photographs.

Every image goes through the evaluation transform (resize, center crop,
normalise) at the model's input size, with the crop and the mean and std of the
model's preprocessing (``keras_t2t.resolve.Preprocessing``; ImageNet's by default).
"""

import os

import numpy as np
from PIL import Image

from keras_t2t.data.images import (
    IMAGE_EXTENSIONS,
    image_files_under,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    load_image,
)
from keras_t2t.export.errors import ExportError

BUILTIN_SAMPLES = "builtin: crops of scikit-learn's sample photographs (china.jpg, flower.jpg)"


def image_files(root, what):
    """Every image file under ``root`` (recursively, sorted, hidden entries skipped); ExportError if none."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ExportError(f"The {what} folder {root!r} does not exist or is not a folder.")
    found = image_files_under(root)
    if not found:
        raise ExportError(
            f"The {what} folder {root!r} holds no image files (looked recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}, any case)."
        )
    return found


def evenly_spaced(items, count):
    """``count`` items spread evenly over ``items`` (all of them when there are no more)."""
    if count >= len(items):
        return list(items)
    index = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(np.int64))
    return [items[i] for i in index]


def load_files(paths, image_hw, crop_pct, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The files as one batch of normalised images; ExportError naming a file that cannot be read."""
    try:
        return np.stack([load_image(p, image_size=image_hw, crop_pct=crop_pct, mean=mean, std=std) for p in paths])
    except ValueError as error:
        raise ExportError(str(error)) from error


def builtin_sample_images(count, image_hw, crop_pct, seed=0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Deterministic square crops of the two photographs bundled with scikit-learn (no download)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 4, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(eval_transform(Image.fromarray(np.ascontiguousarray(crop)), image_hw, crop_pct, mean, std))
    return np.stack(out)


def tfds_images(spec, count, image_hw, crop_pct, data_dir=None, download=False, mean=IMAGENET_MEAN,
                std=IMAGENET_STD):
    """``count`` images of a TFDS dataset ``NAME[:SPLIT]`` (split default ``train``), shuffled with a fixed seed."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ExportError(
            "A TFDS representative set needs tensorflow-datasets: pip install 'keras-t2t[train]' (or "
            "'tensorflow-datasets>=4.9,<4.10' importlib-resources)."
        ) from error
    name, _, split = str(spec).partition(":")
    split = split or "train"
    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=False)
        dataset = dataset.shuffle(min(10 * count, 10000), seed=0, reshuffle_each_iteration=False).take(count)
        examples = list(tfds.as_numpy(dataset))
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds
        hint = "" if download else " (nothing is downloaded: prepare it with `tfds build` or pass --tfds-download)"
        raise ExportError(
            f"Cannot read the TFDS dataset {spec!r}{hint}: {type(error).__name__}: {error}"
        ) from error
    images = []
    for example in examples:
        image = example["image"] if isinstance(example, dict) else example[0]
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        images.append(eval_transform(Image.fromarray(image.astype(np.uint8)), image_hw, crop_pct, mean, std))
    if not images:
        raise ExportError(f"The TFDS dataset {spec!r} gave no images.")
    return np.stack(images)


def verification_images(files, folder, count, image_hw, crop_pct, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``(images, source)``: ``count`` of the folder's ``files``, or the built-in photographs without a folder."""
    if files:
        return load_files(evenly_spaced(files, count), image_hw, crop_pct, mean, std), os.path.abspath(folder)
    return builtin_sample_images(count, image_hw, crop_pct, mean=mean, std=std), BUILTIN_SAMPLES


def calibration_images(files, folder, tfds_spec, count, image_hw, crop_pct, tfds_data_dir=None, tfds_download=False,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``(images, source)``: ``count`` of the folder's ``files``, or of the TFDS dataset ``tfds_spec``."""
    if files:
        return load_files(evenly_spaced(files, count), image_hw, crop_pct, mean, std), os.path.abspath(folder)
    images = tfds_images(tfds_spec, count, image_hw, crop_pct, tfds_data_dir, tfds_download, mean, std)
    return images, f"tfds:{tfds_spec}"


def to_uint8(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Normalised images (with ``mean``, ``std``) back to the uint8 pixels they came from (for the uint8 inputs)."""
    images = np.asarray(images, dtype="float32")
    pixels = (images * np.asarray(std, "float32") + np.asarray(mean, "float32")) * 255.0
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
