"""The small pieces every layer file shares: the package's Dense and LayerNormalization.

The reference initialises each ``nn.Linear`` with ``trunc_normal_(std=.02)`` and a
zero bias, and uses PyTorch's LayerNorm epsilon; these factories build the Keras
layers the same way, so a freshly built model starts as the reference does.
"""

import keras

# The package every layer registers under: saved ``.keras`` files name a layer as
# "keras_t2t>ClassName", so neither part may change.
PACKAGE = "keras_t2t"
# PyTorch's LayerNorm default; Keras's own default (1e-3) would change every output.
LAYER_NORM_EPSILON = 1e-5
# The reference's trunc_normal_(std=.02), for Linear kernels and the class token.
INIT_STDDEV = 0.02


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
