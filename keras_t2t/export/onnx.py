"""ONNX: written by tf2onnx (through ``keras.Model.export``) and run with onnxruntime."""

import importlib.util
import warnings

import numpy as np

from keras_t2t.export.serving import runtime_threads
from keras_t2t.layers import export_tracing

_TF2ONNX_PATCHED = False


def register_tf2onnx_erfc():
    """Teaches tf2onnx TensorFlow's ``Erfc``, which exact GELU lowers to (ONNX has ``Erf``); idempotent."""
    global _TF2ONNX_PATCHED
    if _TF2ONNX_PATCHED:
        return
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    if not any("Erfc" in ops for ops in tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):

        @tf_op("Erfc")
        class _Erfc:  # noqa: F841 - registered by the decorator
            @classmethod
            def version_9(cls, ctx, node, **kwargs):
                # erfc(x) = 1 - erf(x)
                dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
                one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
                erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
                node.type = "Sub"
                ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    _TF2ONNX_PATCHED = True


def write_onnx(path, sources):
    """The format writer: ``sources.classifier`` as an ONNX model at ``path`` (any batch size)."""
    if importlib.util.find_spec("tf2onnx") is None:
        raise RuntimeError("ONNX export needs tf2onnx, onnx and onnxruntime: pip install 'keras-t2t[export]'")
    register_tf2onnx_erfc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with export_tracing(sources.classifier):
            sources.classifier.export(path, format="onnx", verbose=False)


def onnx_runner(path):
    """``run(images) -> logits`` through an onnxruntime CPU session."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = runtime_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images):
        return session.run(["logits"], {input_name: images})[0]

    return run
