"""What every artifact serves, and how the runtimes run it.

Every artifact takes one input named ``images`` and outputs ``logits`` and
``probabilities``. The SavedModel's ``serving_default`` signature (the one the
TFLite converters read) takes normalised float images; ``serving_uint8`` takes
uint8 RGB pixels and normalises inside. The writers trace the model under
``keras_t2t.layers.export_tracing`` (one softmax op per attention, query chunks
as plain slices: builtin TFLite ops only).
"""

import os

INPUT_NAME = "images"
SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"


def runtime_threads():
    """Threads each runtime (LiteRT, onnxruntime) gets when verifying: every core of the machine."""
    return max(1, os.cpu_count() or 1)
