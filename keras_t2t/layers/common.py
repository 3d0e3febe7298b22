"""The small pieces every layer file shares: the package's Dense, LayerNormalization and GELU.

The reference initialises each ``nn.Linear`` with ``trunc_normal_(std=.02)`` and a
zero bias, and uses PyTorch's LayerNorm epsilon; these factories build the Keras
layers the same way, so a freshly built model starts as the reference does.
``gelu`` is the reference's exact (erf) GELU, written out so every exporter sees ``Erf``.
"""

import math

import keras
from keras import ops

# The package every layer registers under: saved ``.keras`` files name a layer as
# "keras_t2t>ClassName", so neither part may change.
PACKAGE = "keras_t2t"
# PyTorch's LayerNorm default; Keras's own default (1e-3) would change every output.
LAYER_NORM_EPSILON = 1e-5
# The reference's trunc_normal_(std=.02), for Linear kernels and the class token.
INIT_STDDEV = 0.02
# 1 / sqrt(2), the scale of erf's argument in the exact GELU (``gelu``).
GELU_SQRT_HALF = 1.0 / math.sqrt(2.0)


def truncated_normal():
    """The initialiser standing in for the reference's ``trunc_normal_(std=.02)``: stddev 0.02."""
    return keras.initializers.TruncatedNormal(stddev=INIT_STDDEV)


def dense(units, name, use_bias=True, dtype=None):
    """A ``Dense`` initialised as the reference's ``nn.Linear`` (truncated normal kernel, zero bias)."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=truncated_normal(),
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def layer_norm(name, dtype=None):
    """A ``LayerNormalization`` with PyTorch's epsilon (``LAYER_NORM_EPSILON``)."""
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def gelu(x):
    """Exact GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))`` (the reference's ``nn.GELU()``).

    Written out rather than ``ops.gelu(x, approximate=False)``: TensorFlow lowers that
    to ``Erfc``, which ONNX lacks (``keras.Model.export(format="onnx")`` writes an op
    ONNX Runtime refuses), while ``erf`` traces to ONNX's ``Erf`` (and OpenVINO's) on
    every backend. The same function as ``ops.gelu`` to float32 rounding (on
    [-12, 12] within 1.1e-6 of the exact value, a few ulp of max(1, |x|), on every
    backend). Below float32 (mixed precision) it computes in float32 and rounds once,
    as PyTorch's kernel does.
    """
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in ("float16", "bfloat16"):
        return ops.cast(gelu(ops.cast(x, "float32")), dtype)
    # x * (1 / sqrt 2), not x / sqrt(2): TensorFlow Lite's converter fuses this product form
    # into its builtin GELU; after a division tf.Erf stays, which TFLite has no builtin for.
    return 0.5 * x * (1.0 + ops.erf(x * GELU_SQRT_HALF))


class ConfigFields:
    """Mixin for layers: ``get_config`` adds the attributes named in ``CONFIG_FIELDS``.

    Each name is a constructor keyword stored under the same attribute name; a
    subclass that adds keywords extends its parent's tuple.
    """

    CONFIG_FIELDS = ()

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.CONFIG_FIELDS})
        return config
