"""The one image vocabulary of the package: normalisation, the evaluation transform, folders, sizes.

Everything that turns an image file or pixels into what a T2T-ViT takes lives
here, so the evaluator, the exporter, the trainer and the visualiser share one
definition (spec section 11):

- ``IMAGENET_MEAN`` / ``IMAGENET_STD``: the normalisation of the released weights;
  ``preprocess_input`` applies it to 0..255 pixels (NumPy or backend tensors) and
  ``denormalize`` undoes it for display.
- ``eval_transform`` / ``load_image``: bicubic resize of the shorter side to
  ``image_size / crop_pct``, center crop (``DEFAULT_CROP_PCT`` 0.9), normalise.
- ``list_image_folder``: an ImageNet-style ``ROOT/<class>/<images>`` folder.
"""

from __future__ import annotations

import math
import os

import numpy as np
from keras import ops
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.9

#: File extensions treated as images (compared case-insensitively). This is
#: torchvision's ``IMG_EXTENSIONS`` set, so a folder lists the same files.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


# --------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------
def as_hw(image_size):
    """``224`` or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(
                f"image_size must be an int or a (height, width) pair, got {image_size!r}"
            )
        h, w = image_size
    else:
        h = w = image_size
    out = []
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"image_size must hold positive integers, got {image_size!r}")
        out.append(int(v))
    return tuple(out)


def check_crop_pct(crop_pct):
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.floating)):
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    crop_pct = float(crop_pct)
    if not (0.0 < crop_pct <= 1.0) or math.isnan(crop_pct):
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    return crop_pct


def resize_size(width, height, image_hw, crop_pct):
    """Output (width, height) of the resize step for a ``width x height`` image."""
    crop_h, crop_w = image_hw
    if crop_h == crop_w:
        # torchvision Resize(int): shorter side -> size, longer side truncated.
        size = int(math.floor(crop_h / crop_pct))
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size
    # Non-square target (timm's ResizeKeepRatio, as timm's eval transform uses
    # for non-square sizes): scale, aspect kept, so that the image covers
    # (floor(h / crop_pct), floor(w / crop_pct)).
    scale_h = int(math.floor(crop_h / crop_pct))
    scale_w = int(math.floor(crop_w / crop_pct))
    ratio = min(height / scale_h, width / scale_w)
    return int(round(width / ratio)), int(round(height / ratio))


def eval_transform(image, image_size=224, crop_pct=DEFAULT_CROP_PCT, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Evaluation preprocessing of one PIL image.

    Args:
        image: a ``PIL.Image.Image`` (any mode; converted to RGB).
        image_size: output size, an int or a ``(height, width)`` pair.
        crop_pct: the center-crop fraction; the shorter side is first resized
            to ``int(image_size / crop_pct)``.
        mean, std: the per-channel normalisation of 0..1 pixels (ImageNet's by default).

    Returns:
        A ``float32`` NumPy array of shape ``(height, width, 3)``, normalised
        with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"eval_transform expects a PIL.Image.Image, got {type(image).__name__}")
    crop_h, crop_w = as_hw(image_size)
    crop_pct = check_crop_pct(crop_pct)
    img = image.convert("RGB")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot preprocess an empty image of size {img.size}")
    new_w, new_h = resize_size(width, height, (crop_h, crop_w), crop_pct)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    # torchvision CenterCrop (the resized image is never smaller than the crop
    # because crop_pct <= 1).
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    img = img.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.astype(np.float32, copy=False)


# What PIL raises for a file it cannot read or decode, or one too large to decode (a decompression bomb).
UNREADABLE_IMAGE = (OSError, Image.DecompressionBombError, SyntaxError, ValueError)


def load_image(path, image_size=224, crop_pct=DEFAULT_CROP_PCT, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Open an image file and apply :func:`eval_transform`.

    Raises:
        ValueError: naming the file, if it cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            with Image.open(f) as img:
                img.load()
                return eval_transform(img, image_size=image_size, crop_pct=crop_pct, mean=mean, std=std)
    except UNREADABLE_IMAGE as e:
        raise ValueError(f"Cannot read image file {path!s}: {e}") from e


# --------------------------------------------------------------------------
# Folder listing
# --------------------------------------------------------------------------
def _is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root):
    """List an ImageNet-style folder ``root/<class>/<image files>``.

    Classes are the sub-folders of ``root`` sorted by name (as torchvision's
    ``ImageFolder``), numbered 0..K-1. Each class folder is searched
    recursively for files whose extension (any case) is in
    :data:`IMAGE_EXTENSIONS`. Hidden entries (names starting with ``.``) are
    ignored.

    Returns:
        ``(paths, labels, class_names)``: lists of file paths and int labels
        (sorted by class, then path) and the sorted class names.

    Raises:
        ValueError: if ``root`` is missing or not a folder, has no class
            sub-folders, or a class folder holds no image (the folder is
            named in the message).
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise ValueError(f"Image folder {root!r} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a folder (expected ROOT/<class>/<images>)")
    with os.scandir(root) as it:
        class_names = sorted(
            e.name for e in it if e.is_dir() and not e.name.startswith(".")
        )
    if not class_names:
        raise ValueError(
            f"Image folder {root!r} has no class sub-folders "
            "(expected ROOT/<class>/<images>, e.g. val/n01440764/*.JPEG)"
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        found = image_files_under(class_dir, root)
        if not found:
            raise ValueError(
                f"Class folder {class_dir!r} holds no image file "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
        found.sort()
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, labels, class_names


def image_files_under(top, root=None):
    """Every image file under ``top`` (recursively, sorted; hidden entries skipped), each folder once.

    A link to a folder is followed once, and never back into ``root`` (the dataset, ``top``
    by default) or above it: a link to an ancestor (``a/up -> ..``) would list the dataset
    again, under another class; a link into another part of the dataset lists nothing
    that is not listed already. Followed links to folders outside are listed like folders.
    """
    root_real = os.path.realpath(root if root is not None else top)
    seen = {os.path.realpath(top)}
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            above = root_real == real or root_real.startswith(real.rstrip(os.sep) + os.sep)
            inside = real.startswith(root_real + os.sep)
            if real in seen or above or (os.path.islink(path) and inside):
                continue
            seen.add(real)
            kept.append(name)
        dirnames[:] = kept
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f))
    return found


def preprocess_input(x, data_format=None):
    """Pixel values in [0, 255], channels-last -> the normalisation the released weights expect.

    ``x / 255``, then per channel ``(x - mean) / std`` with the ImageNet mean
    (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Accepts NumPy arrays
    (returns NumPy) and backend tensors (returns a tensor). Resizing and
    cropping are separate: see ``eval_transform``.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"keras_t2t models take channels_last images; got data_format={data_format!r}.")
    if isinstance(x, np.ndarray) or not hasattr(x, "shape"):
        x = np.asarray(x, dtype="float32")
        if x.shape[-1:] != (3,):
            raise ValueError(f"preprocess_input expects RGB images with 3 channels last; got shape {x.shape}.")
        return ((x / 255.0 - np.asarray(IMAGENET_MEAN, "float32")) / np.asarray(IMAGENET_STD, "float32")).astype(
            "float32"
        )
    if x.shape[-1] != 3:
        raise ValueError(f"preprocess_input expects RGB images with 3 channels last; got shape {tuple(x.shape)}.")
    x = ops.cast(x, "float32") / 255.0
    return (x - ops.convert_to_tensor(IMAGENET_MEAN)) / ops.convert_to_tensor(IMAGENET_STD)


def denormalize(images):
    """Normalised images -> 0..255 float pixels (the inverse of ``preprocess_input``)."""
    images = np.asarray(images, dtype="float32")
    return (images * np.asarray(IMAGENET_STD, "float32") + np.asarray(IMAGENET_MEAN, "float32")) * 255.0


def load_image_resized(path, height, width, channels=3):
    """An image file resized whole (bicubic, no crop) to ``height x width``, normalised by ``preprocess_input``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file {os.fspath(path)!r} does not exist.")
    if channels != 3:
        raise ValueError(f"Image files are read as RGB; this model takes {channels} channels.")
    try:
        with Image.open(path) as handle:
            picture = handle.convert("RGB").resize((width, height), Image.BICUBIC)
    except UNREADABLE_IMAGE as error:
        raise ValueError(f"{os.fspath(path)!r} is not an image PIL can read ({error}).") from error
    return preprocess_input(np.asarray(picture, dtype="float32"))
