"""ONNX: written by tf2onnx (through ``keras.Model.export``), rewritten into ops runtimes fuse, run in onnxruntime.

tf2onnx spells every LayerNormalization as a dozen arithmetic nodes, GELU as
``Erf`` arithmetic, and every 3-D ``Dense`` as reshape -> matmul -> reshape
with the shape computed at run time through int64 -> int32 -> int64 casts.
``fuse_onnx`` writes them back as what they are: one opset-17
``LayerNormalization`` per Keras layer, one opset-20 ``Gelu``, one ``MatMul``
of the 3-D tensor, and no cast that changes nothing. Every rewrite is exact
(the same arithmetic up to float32 rounding); a subgraph that does not match
exactly stays as tf2onnx wrote it. onnxruntime and OpenVINO run these ops
natively and fuse them further (e.g. LayerNormalization with the residual add).
"""

import importlib.util
import logging
import math
import warnings

import numpy as np

from keras_t2t.export.serving import runtime_threads
from keras_t2t.layers import export_tracing
from keras_t2t.layers.common import GELU_SQRT_HALF

#: tf2onnx's newest opset; the file is then converted to ``ONNX_OPSET`` by ONNX's own version converter.
TF2ONNX_OPSET = 18
#: ``Gelu`` entered the standard ops at opset 20 (onnxruntime >= 1.17, OpenVINO >= 2024.0 read it).
ONNX_OPSET = 20
#: ``quantize_dynamic``'s weight type (its activations are always uint8, quantized per call): int8 weights
#: ran T2T-ViT-14 in 0.67-0.83x the time of uint8 ones on an AVX512-VNNI AMD EPYC (onnxruntime 1.32).
DYNAMIC_INT8_WEIGHTS = "QInt8"

_TF2ONNX_PATCHED = False
_SQRT_HALF = np.float32(GELU_SQRT_HALF)  # the constant layers.common.gelu multiplies by
_SQRT_TWO = np.float32(math.sqrt(2.0))
# Casts that change no value: a value of the key type is represented exactly in every listed type.
_LOSSLESS_WIDENING = {
    1: {11},  # float32 -> float64
    10: {1, 11},  # float16 -> float32, float64
    16: {1, 11},  # bfloat16 -> float32, float64
    3: {5, 6, 7, 1, 11},  # int8 -> int16, int32, int64, float32, float64
    2: {4, 5, 6, 7, 12, 13, 1, 11},  # uint8 -> wider ints and floats
    5: {6, 7, 1, 11},  # int16 -> int32, int64, float32, float64
    6: {7, 11},  # int32 -> int64, float64
    9: {2, 3, 4, 5, 6, 7, 12, 13, 1, 10, 11},  # bool -> any number (0 or 1)
}


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
    """The format writer: ``sources.classifier`` as an ONNX model at ``path`` (any batch size), fused."""
    if importlib.util.find_spec("tf2onnx") is None:
        raise RuntimeError("ONNX export needs tf2onnx, onnx and onnxruntime: pip install 'keras-t2t[export]'")
    import onnx
    from onnx import version_converter

    register_tf2onnx_erfc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with export_tracing(sources.classifier):
            sources.classifier.export(path, format="onnx", verbose=False, opset_version=TF2ONNX_OPSET)
    model = version_converter.convert_version(onnx.load(path), ONNX_OPSET)
    fuse_onnx(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def write_onnx_dynamic_int8(path, sources):
    """The format writer: the fused ``model.onnx`` with its MatMul weights in int8, activations quantized per
    call (``onnxruntime.quantization.quantize_dynamic``; no calibration)."""
    import os
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        fused = os.path.join(scratch, "model.onnx")
        write_onnx(fused, sources)
        # Only the MatMuls with a weight (ONNX Runtime's default for dynamic quantization: MatMulConstBOnly):
        # attention's activation x activation products stay float32. The quantizer logs a pre-processing
        # advice on the root logger at every call, which would land in the command's output: held back.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(fused, path, op_types_to_quantize=["MatMul"],
                             weight_type=QuantType[DYNAMIC_INT8_WEIGHTS], extra_options={"MatMulConstBOnly": True})
        finally:
            root.setLevel(level)


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


# --------------------------------------------------------------------------
# The rewrite
# --------------------------------------------------------------------------
def fuse_onnx(model):
    """Rewrites tf2onnx's ``model`` (opset >= 20) in place: 3-D Dense as one MatMul, LayerNormalization and
    Gelu as single nodes, no needless Cast; then drops what nothing reads. Returns ``model``."""
    import onnx

    model.graph.ClearField("value_info")
    graph = _Graph(model.graph, onnx.shape_inference.infer_shapes(model).graph)
    for node in list(model.graph.node):
        if node.op_type == "Reshape":
            _fold_tensordot(graph, node)
    for node in list(model.graph.node):
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            _fuse_layer_norm(graph, node)
        elif node.op_type == "Erf":
            _fuse_gelu(graph, node)
    for node in list(model.graph.node):
        if node.op_type == "Cast":
            _drop_cast(graph, node)
    graph.commit()
    return model


class _Graph:
    """A graph's nodes with who produces and who reads each tensor, the constants' values and the inferred
    dtypes and ranks; rewrites queue replacements and ``commit`` applies them."""

    def __init__(self, graph, inferred):
        from onnx import helper, numpy_helper

        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.types = {}
        for value in (*inferred.input, *inferred.value_info, *inferred.output):
            tensor = value.type.tensor_type
            rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            self.types[value.name] = (tensor.elem_type, rank, dims)
        for name, value in self.constants.items():
            self.types[name] = (helper.np_dtype_to_tensor_dtype(value.dtype), value.ndim, list(value.shape))
        self.graph = graph
        self.renamed = {}  # tensor -> the tensor that now stands for it
        self.added = []  # (new node, the node it goes right after)
        self._index()

    def _index(self):
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.readers = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    def const(self, name):
        return self.constants.get(name)

    def make(self, op_type, inputs, output, after, **attributes):
        """Adds ``op_type`` computing ``output`` (a tensor some node now produces) in place of that node."""
        from onnx import helper

        node = helper.make_node(op_type, inputs, [output], name=f"{output.split(':')[0]}_{op_type}", **attributes)
        self.added.append((node, after))
        self.producer[output] = node

    def only_reader(self, name):
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def input_of(self, node, op_type, *others):
        """The producer of one of ``node``'s two inputs that is ``op_type``, and ``node``'s other input."""
        for i, name in enumerate(node.input):
            producer = self.producer.get(name)
            if producer is not None and producer.op_type in (op_type, *others):
                return producer, node.input[1 - i]
        return None, None

    def commit(self):
        """Puts the new nodes in place of the ones whose output they took over, then drops every node and
        constant nothing reads (tf2onnx keeps its names on the graph's outputs)."""
        nodes = list(self.graph.node)
        for node, after in self.added:
            replaced = [i for i, old in enumerate(nodes) if old is after]
            nodes.insert(replaced[0] + 1, node)
        for node in nodes:
            for i, name in enumerate(node.input):
                node.input[i] = self.resolve(name)
        for output in self.graph.output:
            if output.name in self.renamed:
                self._rename_graph_output(nodes, output.name)
        needed = {output.name for output in self.graph.output}
        kept = []
        for node in reversed(nodes):
            if any(out in needed for out in node.output) and not self._superseded(node):
                kept.append(node)
                needed.update(node.input)
                for attribute in node.attribute:  # subgraphs (If, Loop) read outer names too
                    for sub in [attribute.g, *attribute.graphs]:
                        needed.update(name for inner in sub.node for name in inner.input)
        del self.graph.node[:]
        self.graph.node.extend(reversed(kept))
        initializers = [init for init in self.graph.initializer if init.name in needed]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)

    def resolve(self, name):
        while name in self.renamed:
            name = self.renamed[name]
        return name

    def _superseded(self, node):
        """A node one of whose outputs a new node now computes."""
        return any(self.producer.get(out) is not node for out in node.output)

    def _rename_graph_output(self, nodes, name):
        # A graph output keeps its name: the node computing its stand-in computes it under that name.
        source = self.resolve(name)
        for node in nodes:
            for i, out in enumerate(node.output):
                if out == source:
                    node.output[i] = name
                    self.producer[name] = node
            for i, read in enumerate(node.input):
                if read == source:
                    node.input[i] = name
        self.renamed.pop(name)


def _fold_tensordot(graph, reshape):
    """``Reshape(MatMul(Reshape(x, [-1, C]), W), concat(shape(x)[:-1], [D]))`` -> ``MatMul(x, W)`` (and
    ``Reshape(MatMul(Reshape(x, [-1, C]), W), S)`` -> ``Reshape(MatMul(x, W), S)`` for a constant ``S``).

    TensorFlow's ``Tensordot`` (a Dense on a (B, T, C) input) flattens, multiplies and unflattens, the
    output shape computed at run time from ``Shape(x)`` through casts; ONNX's MatMul broadcasts over
    the leading axes, the same dot products.
    """
    matmul = graph.producer.get(reshape.input[0])
    if matmul is None or matmul.op_type != "MatMul" or graph.only_reader(matmul.output[0]) is not reshape:
        return
    weights = graph.const(matmul.input[1])
    flatten = graph.producer.get(matmul.input[0])
    if weights is None or weights.ndim != 2 or flatten is None or flatten.op_type != "Reshape":
        return
    x = flatten.input[0]
    flat_shape = graph.const(flatten.input[1])
    _, rank, dims = graph.types.get(x, (None, None, None))
    if flat_shape is None or rank is None or rank < 3 or list(flat_shape) != [-1, weights.shape[0]]:
        return
    if graph.const(reshape.input[1]) is not None and dims[-1] == weights.shape[0]:
        # Reshaped to a fixed shape (TensorFlow folded it): the rows are in the same order either way.
        graph.make("MatMul", [x, matmul.input[1]], matmul.output[0], after=matmul)
        return
    if dims[-1] not in (None, weights.shape[0]):
        return  # (an unknown last axis is C: else the original's reshapes would not fit)
    if not _is_leading_shape_then(graph, reshape.input[1], x, rank, weights.shape[1]):
        return
    graph.make("MatMul", [x, matmul.input[1]], reshape.output[0], after=reshape)


def _is_leading_shape_then(graph, name, x, rank, last):
    """Whether tensor ``name`` is ``Shape(x)[:rank - 1] ++ [last]`` (through casts between integer types)."""
    concat = _skip_casts(graph, name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return False
    tail = graph.const(concat.input[1])
    gather = _skip_casts(graph, concat.input[0])
    if tail is None or list(tail) != [last] or gather is None or gather.op_type != "Gather":
        return False
    indices = graph.const(gather.input[1])
    shape = _skip_casts(graph, gather.input[0])
    return (
        indices is not None
        and list(indices) == list(range(rank - 1))
        and shape is not None
        and shape.op_type == "Shape"
        and not shape.attribute  # the whole shape (no start/end)
        and shape.input[0] == x
    )


def _skip_casts(graph, name):
    node = graph.producer.get(name)
    while node is not None and node.op_type == "Cast":
        node = graph.producer.get(node.input[0])
    return node


def _mean_over_last_axis(graph, node):
    """The input a GlobalAveragePool / ReduceMean node averages over its last axis (kept), or ``None``."""
    _, rank, _ = graph.types.get(node.input[0], (None, None, None))
    if rank is None:
        return None
    if node.op_type == "GlobalAveragePool":
        return node.input[0] if rank == 3 else None  # averages axes 2.. : the last one at rank 3
    attributes = {a.name: a for a in node.attribute}
    if "keepdims" in attributes and attributes["keepdims"].i != 1:
        return None
    axes = graph.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if axes is None and "axes" in attributes:
        axes = list(attributes["axes"].ints)
    if axes is None or [int(a) % rank for a in np.ravel(axes)] != [rank - 1]:
        return None
    return node.input[0]


def _fuse_layer_norm(graph, mean):
    """TensorFlow's LayerNormalization (``tf.nn.moments`` + ``tf.nn.batch_normalization``) -> one
    ``LayerNormalization(x, gamma, beta, epsilon, axis=-1)``.

    tf2onnx writes ``mean = avg(x)``, ``var = avg((x - mean)^2)``, ``s = gamma / sqrt(var + eps)``,
    ``y = x * s + (beta - mean * s)`` (with beta = 0 folded into ``-mean * s``): the same statistics
    ONNX's operator computes, applied as ``(x - mean) * s + beta``.
    """
    x = _mean_over_last_axis(graph, mean)
    if x is None:
        return
    squared = None
    for sub in graph.readers.get(mean.output[0], []):
        if sub.op_type == "Sub" and list(sub.input) == [x, mean.output[0]]:
            for reader in graph.readers.get(sub.output[0], []):
                if reader.op_type == "Mul" and list(reader.input) == [sub.output[0]] * 2:
                    squared = reader
    if squared is None:
        return
    variance = graph.only_reader(squared.output[0])
    if variance is None or variance.op_type != mean.op_type or _mean_over_last_axis(graph, variance) is None:
        return
    add = graph.only_reader(variance.output[0])
    epsilon = graph.const(add.input[1]) if add is not None and add.op_type == "Add" else None
    if epsilon is None or epsilon.size != 1:
        return
    sqrt = graph.only_reader(add.output[0])
    reciprocal = graph.only_reader(sqrt.output[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if reciprocal is None or reciprocal.op_type != "Reciprocal":
        return
    scale_node = graph.only_reader(reciprocal.output[0])
    gamma = None
    if scale_node is not None and scale_node.op_type == "Mul":
        gamma = graph.const(_other(scale_node, reciprocal.output[0]))
    # gamma: one value per channel of x's last axis (known, or implied by gamma's broadcast).
    channels = graph.types[x][2][-1] or (gamma.shape[-1] if gamma is not None and gamma.ndim else None)
    if gamma is None or channels in (None, 1) or gamma.size != channels or gamma.shape[-1] != channels:
        return
    output = _layer_norm_output(graph, x, mean.output[0], scale_node.output[0])
    if output is None:
        return
    add_node, beta = output
    if beta.size not in (1, channels) or (beta.ndim and beta.shape[-1] != beta.size):
        return
    from onnx import numpy_helper

    name = add_node.output[0].split(":")[0]
    gamma_name, beta_name = f"{name}_gamma", f"{name}_beta"
    graph.graph.initializer.extend([
        numpy_helper.from_array(gamma.reshape(channels).astype(np.float32), gamma_name),
        numpy_helper.from_array(np.broadcast_to(beta.reshape(-1), (channels,)).astype(np.float32), beta_name),
    ])
    graph.make("LayerNormalization", [x, gamma_name, beta_name], add_node.output[0], after=add_node,
               axis=-1, epsilon=float(epsilon.ravel()[0]))


def _other(node, name):
    return node.input[1] if node.input[0] == name else node.input[0]


def _layer_norm_output(graph, x, mean, scale):
    """The node computing ``x * scale + (beta - mean * scale)`` and beta, or ``None``."""
    for times_x in graph.readers.get(scale, []):
        if times_x.op_type != "Mul" or _other(times_x, scale) != x:
            continue
        add = graph.only_reader(times_x.output[0])
        if add is None or add.op_type != "Add":
            continue
        shift = graph.producer.get(_other(add, times_x.output[0]))
        if shift is None:
            continue
        if _is_minus_mean_times_scale(graph, shift, mean, scale):  # beta = 0, folded away
            return add, np.zeros((), np.float32)
        if shift.op_type == "Add":  # -mean * scale + beta
            for i, name in enumerate(shift.input):
                beta = graph.const(shift.input[1 - i])
                if beta is not None and _is_minus_mean_times_scale(graph, graph.producer.get(name), mean, scale):
                    return add, beta
        if shift.op_type == "Sub":  # beta - mean * scale
            beta = graph.const(shift.input[0])
            product = graph.producer.get(shift.input[1])
            if (beta is not None and product is not None and product.op_type == "Mul"
                    and sorted(product.input) == sorted([mean, scale])):
                return add, beta
    return None


def _is_minus_mean_times_scale(graph, node, mean, scale):
    if node is None or node.op_type != "Mul" or scale not in node.input:
        return False
    negated = graph.producer.get(_other(node, scale))
    return negated is not None and negated.op_type == "Neg" and negated.input[0] == mean


def _fuse_gelu(graph, erf):
    """``0.5 * x * (1 + erf(x / sqrt(2)))`` (the exact GELU, in either order of its products) -> ``Gelu(x)``."""
    scaled = graph.producer.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Mul", "Div") or len(scaled.input) != 2:
        return
    factor = graph.const(scaled.input[1])
    if factor is None or factor.size != 1:
        return
    wanted = _SQRT_HALF if scaled.op_type == "Mul" else _SQRT_TWO
    if np.float32(factor.ravel()[0]) != wanted:
        return
    x = scaled.input[0]
    plus_one = graph.only_reader(erf.output[0])
    if plus_one is None or plus_one.op_type != "Add" or not _is_scalar(graph, _other(plus_one, erf.output[0]), 1.0):
        return
    product = graph.only_reader(plus_one.output[0])
    if product is None or product.op_type != "Mul":
        return
    other = _other(product, plus_one.output[0])
    half_x = graph.producer.get(other)
    if (half_x is not None and half_x.op_type == "Mul" and x in half_x.input
            and _is_scalar(graph, _other(half_x, x), 0.5)):
        output = product  # (0.5 * x) * (1 + erf)
    elif other == x:
        output = graph.only_reader(product.output[0])  # (x * (1 + erf)) * 0.5
        if output is None or output.op_type != "Mul" or not _is_scalar(graph, _other(output, product.output[0]), 0.5):
            return
    else:
        return
    graph.make("Gelu", [x], output.output[0], after=output)


def _is_scalar(graph, name, value):
    constant = graph.const(name)
    return constant is not None and constant.size == 1 and float(constant.ravel()[0]) == value


def _drop_cast(graph, cast):
    """A Cast to the type its input already has, or back to the type before a lossless cast, reads through."""
    target = next(a.i for a in cast.attribute if a.name == "to")
    source = graph.types.get(cast.input[0], (None,))[0]
    if source == target:
        graph.renamed[cast.output[0]] = cast.input[0]
        graph.producer.pop(cast.output[0])
        return
    before = graph.producer.get(cast.input[0])
    if before is not None and before.op_type == "Cast":
        original = graph.types.get(before.input[0], (None,))[0]
        if original == target and source in _LOSSLESS_WIDENING.get(original, ()):
            graph.renamed[cast.output[0]] = before.input[0]
            graph.producer.pop(cast.output[0])
