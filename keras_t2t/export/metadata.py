"""TFLite metadata: what mobile runtimes read from a ``.tflite`` (image size, input normalisation, labels).

The metadata is the TFLite metadata schema (``metadata_schema.fbs`` of
TFLite Support / MediaPipe, file identifier ``M001``), stored as the model's
``TFLITE_METADATA`` buffer, with the label file appended to the model as an
uncompressed zip archive (the schema's "associated files"). Only schema 1.0.0
fields are used. MediaPipe's ``ImageClassifier`` and the TFLite Task Library
read it: the input's image size and colour space, its normalisation
``(pixel - mean) / std`` on 0..255 pixels (absent when the model takes uint8
pixels and normalises inside), and for each output the labels, one per line.
The metadata describes the outputs in the order of the model's outputs, which
``add_metadata`` can set (``output_order``): MediaPipe's first head, and
LiteRT's first output, are the model's first output.

The flatbuffer is written and read here with the ``flatbuffers`` runtime
(which TensorFlow and LiteRT already need) rather than a generated schema
module, so export does not depend on a metadata package.
"""

from __future__ import annotations

import io
import os
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

METADATA_BUFFER_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"

# Union tags and enum values of metadata_schema.fbs.
_IMAGE_PROPERTIES, _FEATURE_PROPERTIES = 2, 1  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
_RGB = 1  # ColorSpaceType
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
_FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS"}
# The converter aligns constant data to 16 bytes; rebuilt models keep that.
_BUFFER_ALIGNMENT = 16


# --------------------------------------------------------------------------
# Writing the metadata flatbuffer
# --------------------------------------------------------------------------
class _Writer:
    """Tables of the metadata schema, by field slot (the order of the fields in the schema)."""

    def __init__(self):
        self.builder = flatbuffers.Builder(1024)

    def string(self, text):
        return None if text is None else self.builder.CreateString(text)

    def tables(self, offsets):
        builder = self.builder
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    def floats(self, values):
        return self.builder.CreateNumpyVector(np.asarray(values, "<f4"))

    def table(self, **fields):
        """``slot=(kind, value)`` with kind ``"offset"``, ``"byte"`` or ``"uint"``; ``None`` values are left out."""
        builder = self.builder
        builder.StartObject(max((int(slot[1:]) for slot in fields), default=-1) + 1)
        for slot, (kind, value) in fields.items():
            if value is None:
                continue
            index = int(slot[1:])
            if kind == "offset":
                builder.PrependUOffsetTRelativeSlot(index, value, 0)
            elif kind == "byte":
                builder.PrependUint8Slot(index, value, 0)
            else:
                builder.PrependUint32Slot(index, value, 0)
        return builder.EndObject()


def classifier_metadata(name, description, image_hw, outputs, labels_file=None, normalization=None, author=None):
    """The metadata flatbuffer (bytes) of an image classifier with one RGB image input.

    ``image_hw`` is ``(height, width)``; ``outputs`` the output names in the
    order of the model's outputs; ``labels_file`` the name of the associated
    label file attached to every output (or ``None``); ``normalization``
    ``(mean, std)`` per channel on 0..255 pixels for a float input, ``None``
    for a model that takes uint8 pixels.
    """
    w = _Writer()

    def labels():
        if labels_file is None:
            return None
        entry = w.table(
            f0=("offset", w.string(labels_file)),
            f1=("offset", w.string("class names, one per line: line i names output index i")),
            f2=("byte", _TENSOR_AXIS_LABELS),
        )
        return w.tables([entry])

    height, width = (int(v) for v in image_hw)
    size = w.table(f0=("uint", width), f1=("uint", height))
    image = w.table(f0=("byte", _RGB), f1=("offset", size))
    content = w.table(f0=("byte", _IMAGE_PROPERTIES), f1=("offset", image))
    units = None
    if normalization is not None:
        mean, std = w.floats(normalization[0]), w.floats(normalization[1])
        options = w.table(f0=("offset", mean), f1=("offset", std))
        units = w.tables([w.table(f0=("byte", _NORMALIZATION_OPTIONS), f1=("offset", options))])
    input_text = (
        f"RGB image, {height}x{width}, "
        + ("uint8 pixels 0..255 (normalised inside the model)" if normalization is None
           else "float32, (pixel - mean) / std per channel on 0..255 pixels")
    )
    tensor_in = w.table(
        f0=("offset", w.string("image")), f1=("offset", w.string(input_text)), f3=("offset", content),
        f4=("offset", units),
    )
    tensors_out = []
    for output in outputs:
        feature = w.table(f0=("byte", _FEATURE_PROPERTIES), f1=("offset", w.table()))
        tensors_out.append(
            w.table(f0=("offset", w.string(output)), f1=("offset", w.string(f"class {output}")),
                    f3=("offset", feature), f6=("offset", labels()))
        )
    subgraph = w.table(f2=("offset", w.tables([tensor_in])), f3=("offset", w.tables(tensors_out)))
    root = w.table(
        f0=("offset", w.string(name)),
        f1=("offset", w.string(description)),
        f3=("offset", w.tables([subgraph])),
        f4=("offset", w.string(author)),
        f7=("offset", w.string(MIN_PARSER_VERSION)),
    )
    w.builder.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(w.builder.Output())


# --------------------------------------------------------------------------
# Putting it into a model
# --------------------------------------------------------------------------
def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _aligned_buffer_class(schema):
    class AlignedBuffer(schema.BufferT):
        """A model buffer whose data starts on a 16-byte boundary, as the converter writes it."""

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                array = np.asarray(self.data, np.uint8)
                builder.Prep(_BUFFER_ALIGNMENT, array.size)
                data = builder.CreateNumpyVector(array)
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBuffer


def add_metadata(model_content, metadata, associated_files=None, output_order=None):
    """``model_content`` (a ``.tflite`` as bytes) with ``metadata`` and ``associated_files`` (``{name: bytes}``).

    The metadata replaces any earlier ``TFLITE_METADATA`` of the model. With
    ``output_order`` (the names of the first signature's outputs), the model gives
    its outputs in that order and each output tensor carries its signature name
    (``order_outputs``); the metadata must describe them in that order. The
    model is rebuilt with the generated object API of LiteRT's schema, so it
    must hold its weights inside the flatbuffer (as models under 2 GB do).
    """
    schema = _schema()
    content = bytes(model_content)
    packed = schema.Model.GetRootAsModel(content, 0)
    if any(packed.Buffers(i).Offset() > 1 for i in range(packed.BuffersLength())):
        raise ValueError("Models that keep their weights outside the flatbuffer (over 2 GB) are not supported.")
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if output_order is not None:
        order_outputs(model, output_order)
    aligned = _aligned_buffer_class(schema)
    buffers = []
    for old in model.buffers or []:
        buffer = aligned()
        buffer.data, buffer.offset, buffer.size = old.data, old.offset, old.size
        buffers.append(buffer)
    kept = [entry for entry in (model.metadata or []) if _text(entry.name) != METADATA_BUFFER_NAME]
    metadata_buffer = aligned()
    metadata_buffer.data = np.frombuffer(metadata, np.uint8)
    buffers.append(metadata_buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(buffers) - 1
    model.buffers, model.metadata = buffers, kept + [entry]
    builder = flatbuffers.Builder(len(content) + len(metadata) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    out = io.BytesIO()
    out.write(builder.Output())
    if associated_files:
        # Appended to the model: zip readers find the archive from its end, the interpreter ignores it.
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            for name, data in associated_files.items():
                archive.writestr(name, data)
    return out.getvalue()


def order_outputs(model, names):
    """Puts the outputs of ``model`` (LiteRT's object API ``ModelT``) in the order of ``names``, the names of
    its first signature's outputs, and names each output tensor after its signature name.

    The converter sorts a signature's outputs by name and names their tensors after the graph's
    (``StatefulPartitionedCall:0``, ...); runtimes that read outputs by position (MediaPipe's first head,
    ``Interpreter.get_output_details()``) then get what the order says, under a name that tells it.
    """
    signature = model.signatureDefs[0]
    by_name = {_text(entry.name): entry for entry in signature.outputs}
    if sorted(by_name) != sorted(names):
        raise ValueError(f"The model's outputs are {sorted(by_name)}; expected {sorted(names)}.")
    graph = model.subgraphs[signature.subgraphIndex]
    order = [by_name[name].tensorIndex for name in names]
    if sorted(order) != sorted(int(i) for i in graph.outputs):
        raise ValueError(f"The signature's output tensors {order} are not the subgraph's {list(graph.outputs)}.")
    signature.outputs = [by_name[name] for name in names]
    graph.outputs = np.asarray(order, np.int32)
    for name, index in zip(names, order):
        graph.tensors[index].name = name


def signature_output_names(model_content):
    """The output names of the model's first signature, in the order of its subgraph's outputs."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(model_content, 0)
    signature = model.SignatureDefs(0)
    by_tensor = {signature.Outputs(i).TensorIndex(): _text(signature.Outputs(i).Name())
                 for i in range(signature.OutputsLength())}
    graph = model.Subgraphs(signature.SubgraphIndex())
    return [by_tensor.get(graph.Outputs(i), f"output_{i}") for i in range(graph.OutputsLength())]


# --------------------------------------------------------------------------
# Reading it back
# --------------------------------------------------------------------------
def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _offset(table, slot):
    return table.Offset(4 + 2 * slot)


def _string(table, slot):
    o = _offset(table, slot)
    return _text(table.String(o + table.Pos)) if o else None


def _scalar(table, slot, flags=number_types.Uint8Flags):
    o = _offset(table, slot)
    return table.Get(flags, o + table.Pos) if o else 0


def _subtable(table, slot):
    o = _offset(table, slot)
    return Table(table.Bytes, table.Indirect(o + table.Pos)) if o else None


def _subtables(table, slot):
    o = _offset(table, slot)
    if not o:
        return []
    start = table.Vector(o)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(o))]


def _floats(table, slot):
    o = _offset(table, slot)
    if not o:
        return None
    return [round(float(v), 4) for v in table.GetVectorAsNumpy(number_types.Float32Flags, o)]  # float32 noise


def _files(table, slot):
    return [{"name": _string(f, 0), "type": _FILE_TYPES.get(_scalar(f, 2), "OTHER")} for f in _subtables(table, slot)]


def _tensor(table):
    out = {"name": _string(table, 0), "description": _string(table, 1)}
    content = _subtable(table, 3)
    if content is not None and _scalar(content, 0) == _IMAGE_PROPERTIES:
        image = _subtable(content, 1)
        size = _subtable(image, 1)
        out["color_space"] = _COLOR_SPACES.get(_scalar(image, 0), "OTHER")
        if size is not None:
            out["image_size"] = [_scalar(size, 1, number_types.Uint32Flags), _scalar(size, 0, number_types.Uint32Flags)]
    for unit in _subtables(table, 4):
        if _scalar(unit, 0) == _NORMALIZATION_OPTIONS:
            options = _subtable(unit, 1)
            out["normalization"] = {"mean": _floats(options, 0), "std": _floats(options, 1)}
    files = _files(table, 6)
    if files:
        out["associated_files"] = files
    return out


def read_metadata(model):
    """The metadata of a ``.tflite`` (a path or bytes) as a dict, or ``None`` when it has none.

    ``{"name", "description", "author", "min_parser_version", "inputs": [...],
    "outputs": [...], "files": {name: bytes}}``; each tensor has ``name``,
    ``description`` and what applies of ``color_space``, ``image_size``
    ``[height, width]``, ``normalization`` ``{"mean", "std"}`` and
    ``associated_files``.
    """
    content = model
    if not isinstance(content, (bytes, bytearray)):
        with open(os.fspath(model), "rb") as handle:
            content = handle.read()
    content = bytes(content)
    schema = _schema()
    tflite = schema.Model.GetRootAsModel(content, 0)
    buffer_index = None
    for i in range(tflite.MetadataLength()):
        if _text(tflite.Metadata(i).Name()) == METADATA_BUFFER_NAME:
            buffer_index = tflite.Metadata(i).Buffer()
    if buffer_index is None:
        return None
    data = tflite.Buffers(buffer_index).DataAsNumpy().tobytes()
    if data[4:8] != METADATA_IDENTIFIER:
        raise ValueError(f"The model's {METADATA_BUFFER_NAME} buffer is not TFLite metadata ({data[4:8]!r}).")
    data = bytearray(data)
    root = Table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    subgraphs = _subtables(root, 3)
    files = {}
    if zipfile.is_zipfile(io.BytesIO(content)):
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    return {
        "name": _string(root, 0),
        "description": _string(root, 1),
        "author": _string(root, 4),
        "min_parser_version": _string(root, 7),
        "inputs": [_tensor(t) for t in _subtables(subgraphs[0], 2)] if subgraphs else [],
        "outputs": [_tensor(t) for t in _subtables(subgraphs[0], 3)] if subgraphs else [],
        "files": files,
    }


def describe_metadata(model):
    """The short form ``report.json`` records: image size, normalisation, labels file and its line count."""
    found = read_metadata(model)
    if found is None:
        return None
    image = found["inputs"][0] if found["inputs"] else {}
    labels = sorted({f["name"] for output in found["outputs"] for f in output.get("associated_files", [])})
    return {
        "image_size": image.get("image_size"),
        "normalization": image.get("normalization") or "inside the model (uint8 pixels)",
        "labels": {name: len(found["files"].get(name, b"").decode("utf-8").splitlines()) for name in labels},
        "outputs": [output["name"] for output in found["outputs"]],
    }
