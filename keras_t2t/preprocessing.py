"""Input preprocessing of the released weights (spec section 11)."""

import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, data_format=None):
    """Pixel values in [0, 255], channels-last -> the normalisation the released weights expect.

    ``x / 255``, then per channel ``(x - mean) / std`` with the ImageNet mean
    (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Accepts NumPy arrays
    (returns NumPy) and backend tensors (returns a tensor). Resizing and
    cropping are separate: see ``keras_t2t.evaluation.eval_transform``.
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
