"""The int8 recipe of ``tflite_int8``: the fully connected layers in int8, every other op in float32.

Every ``FULLY_CONNECTED`` op (the qkv, projection and MLP layers of every
block, the T2T layers' own, the performer's random-feature projection, the
head) runs in int8: int8 weights (per output channel) and int8 activations
whose ranges are calibrated on the representative images. Everything else
(LayerNorm's mean/variance/rsqrt, softmax, the performer's exp and
normalising division, GELU, the attention's batch matmuls, residual adds)
stays float32, and so do the model's input and outputs.

Why this recipe (measured on trained digits models, 359 validation images,
in ``tflite/README.md``): a fully integer model loses the performer's
exp/sum/division and the LayerNorms (its logits moved by more than 3, and 4
to 7% of the top-1 answers changed); keeping those in float gave 98 to 100%
agreement but ran slower than float32, because the interpreter's fast CPU
kernels (XNNPACK) take the float graph and only some integer ops, and every
switch between the two costs a copy. The matmuls hold nearly all the weights
and the arithmetic; in int8 they make the model about a third of the size
and faster than float32, while the numerically delicate ops keep float32.
"""

import warnings

from keras_t2t.export.serving import INPUT_NAME

#: The op types computed in int8 in ``tflite_int8``; every other op stays float32.
INT8_OPS = ("FULLY_CONNECTED",)
#: A short description of the recipe, as ``report.json`` records it.
INT8_RECIPE = (
    "FULLY_CONNECTED ops in int8 (weights per channel, activations calibrated on the representative images); "
    "every other op, the input and the outputs in float32"
)


def float_op_names():
    """Every TFLite builtin op name except ``INT8_OPS``: the converter's denylist."""
    from ai_edge_litert import schema_py_generated as schema

    return sorted(name for name in vars(schema.BuiltinOperator) if not name.startswith("_") and name not in INT8_OPS)


def quantize_int8(converter, representative):
    """The flatbuffer (bytes) of ``converter``'s model with ``INT8_OPS`` in int8, calibrated on ``representative``.

    ``converter`` is a ``tf.lite.TFLiteConverter`` of one signature whose
    input is ``INPUT_NAME``; ``representative`` holds that input's values, one
    image per row (normalised floats or uint8 pixels, as the signature takes).
    """
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({INPUT_NAME: image[None]} for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TF's own deprecation notices about tf.lite
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: iter(()),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=float_op_names(), fully_quantize=False
            ),
        )
        return debugger.get_nondebug_quantized_model()
