"""Built-in data that needs no download: scikit-learn's handwritten digits as RGB images."""

import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from keras_t2t.data.images import preprocess_input


def load_digits_images(image_size=32, validation_fraction=0.2, seed=0):
    """scikit-learn's 1,797 8x8 digit scans as ``(N, size, size, 3)`` float images in [0, 255].

    Returns ``(x_train, y_train), (x_val, y_val)``, split per class (stratified)
    with a fixed seed. Pixels are upsampled by nearest neighbour (8x8 -> 32x32
    repeats each pixel 4x4) so every model size sees the same digits.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The built-in digits data comes from scikit-learn: pip install scikit-learn "
            "(or install keras-t2t with the [test] extra)."
        ) from error
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (the digits are 8x8); got {image_size}.")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction}.")
    digits = load_digits()
    scale = image_size // 8
    images = digits.images.astype("float32") * (255.0 / 16.0)
    images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype("int32")
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        val_idx.extend(members[: int(round(len(members) * validation_fraction))])
    val_mask = np.zeros(len(labels), bool)
    val_mask[val_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~val_mask))
    return (images[train_idx], labels[train_idx]), (images[val_mask], labels[val_mask])


def default_digits_dir():
    """Where the digits folder is written by default: ``$KERAS_HOME/datasets/keras_t2t_digits``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets", "keras_t2t_digits")


def write_digits_folder(root=None, image_size=32, validation_fraction=0.2, seed=0):
    """Writes the digits once as an ImageNet-style folder ``root/{train,val}/<digit>/*.png``.

    The folder is built beside ``root`` and renamed into place, so an
    interrupted write leaves nothing half-made; a complete folder (marked by
    ``root/.complete``) is reused as is. Returns ``root``.
    """
    root = os.path.abspath(root or default_digits_dir())
    if os.path.exists(os.path.join(root, ".complete")):
        return root
    if os.path.exists(root) and os.listdir(root):
        raise ValueError(
            f"{root!r} exists, is not empty and is not a complete digits folder (no .complete marker); "
            "remove it or pass another folder."
        )
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    (x_train, y_train), (x_val, y_val) = load_digits_images(image_size, validation_fraction, seed)
    staging = tempfile.mkdtemp(dir=parent, prefix=".digits-")
    try:
        for split, images, labels in (("train", x_train, y_train), ("val", x_val, y_val)):
            for index, (image, label) in enumerate(zip(images, labels)):
                folder = os.path.join(staging, split, str(int(label)))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(np.round(image).astype("uint8")).save(os.path.join(folder, f"{index:05d}.png"))
        open(os.path.join(staging, ".complete"), "w").close()
        if os.path.isdir(root):
            os.rmdir(root)  # empty, checked above
        try:
            os.rename(staging, root)
        except OSError:
            # Another process finished first: use its copy.
            if not os.path.exists(os.path.join(root, ".complete")):
                raise
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return root


def digits_sample(height, width, index=0):
    """Validation digit ``index`` of the built-in digits (as the training command splits them), normalised."""
    if height != width or height % 8:
        raise ValueError(
            f"The built-in digits sample needs a square input of a multiple of 8 pixels; this model takes "
            f"{height}x{width}. Give an image file with --image."
        )
    _, (x_val, y_val) = load_digits_images(image_size=height)
    if not 0 <= index < len(x_val):
        raise ValueError(f"digit index {index} is out of range 0..{len(x_val) - 1}.")
    return preprocess_input(x_val[index]), int(y_val[index])
