"""What every artifact serves, and how the runtimes run it.

Every artifact takes one input named ``images`` and outputs ``probabilities``
and ``logits`` (in this order where outputs have one: the TFLite models'
first output, MediaPipe's first head, is the probabilities). The SavedModel's ``serving_default`` signature (the one the
TFLite converters read) takes normalised float images; ``serving_uint8`` takes
uint8 RGB pixels and normalises inside (``normalize_pixels``, with the model's
own mean and std: ``keras_t2t.resolve.Preprocessing``). The writers trace the model under
``keras_t2t.layers.export_tracing`` (one softmax op per attention, query chunks
as plain slices: builtin TFLite ops only).
"""

import os

import numpy as np
from keras import ops

from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "images"
#: The outputs, in the order of the TFLite models' outputs.
OUTPUT_ORDER = ("probabilities", "logits")
SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"


def runtime_threads():
    """Threads each runtime (LiteRT, onnxruntime) gets when verifying: every core of the machine."""
    return max(1, os.cpu_count() or 1)


def normalize_pixels(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """0..255 RGB pixels -> ``(pixels / 255 - mean) / std`` per channel (``keras_t2t.preprocess_input``'s
    arithmetic, with any mean and std). NumPy in, NumPy out; a tensor in, a tensor out."""
    if isinstance(pixels, np.ndarray):
        x = pixels.astype(np.float32) / np.float32(255.0)
        return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
    x = ops.cast(pixels, "float32") / 255.0
    return (x - ops.convert_to_tensor(tuple(float(v) for v in mean))) / ops.convert_to_tensor(
        tuple(float(v) for v in std))
