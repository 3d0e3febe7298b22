"""The export formats: one record each (its file, writer, runtime, tolerance), and the table derived from them.

To add a format, add one ``ExportFormat`` to ``FORMAT_SPECS`` with its writer
and runner; the planning, writing, verification, report and ``--formats`` all
read the records.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.export.errors import ExportError
from keras_t2t.export.onnx import onnx_runner, write_onnx, write_onnx_dynamic_int8
from keras_t2t.export.openvino import inspect_openvino, openvino_runner, write_openvino, write_openvino_int8
from keras_t2t.export.saved_model import (
    saved_model_runner,
    saved_model_uint8_runner,
    write_saved_model,
)
from keras_t2t.export.tflite import inspect_tflite, tflite_runner, write_tflite

FLOAT_LOGIT_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What an artifact must reach against the Keras model's logits on the sample images.

    ``metric`` is ``"max_abs_diff"`` (at most ``threshold``) or
    ``"top1_agreement"`` (at least ``threshold``; ``None`` means the export's
    ``int8_agreement`` option). ``group`` names the formats sharing it in
    ``report.json`` (``None``: a format of its own).
    """

    metric: str
    threshold: float | None
    group: str | None = None

    def limit(self, int8_agreement):
        return float(int8_agreement) if self.threshold is None else self.threshold

    def text(self, int8_agreement):
        """The short form of the table's ``tolerance`` column."""
        limit = self.limit(int8_agreement)
        if self.metric == "max_abs_diff":
            return f"max diff <= {limit:g}"
        return "top-1 = 100%" if self.threshold == 1.0 else f"top-1 >= {100 * limit:g}%"

    def description(self, int8_agreement):
        """The long form of ``report.json``'s ``tolerances``."""
        limit = self.limit(int8_agreement)
        if self.metric == "max_abs_diff":
            return f"max |logit diff| <= {limit:g}"
        return "top-1 agreement 100%" if self.threshold == 1.0 else f"top-1 agreement >= {100 * limit:g}%"

    def passes(self, max_abs_diff, top1_agreement, int8_agreement):
        limit = self.limit(int8_agreement)
        if self.metric == "max_abs_diff":
            return bool(max_abs_diff <= limit)  # False for NaN
        return bool(top1_agreement >= limit - 1e-12) and not math.isnan(max_abs_diff)


FLOAT_EXACT = Tolerance("max_abs_diff", FLOAT_LOGIT_ATOL, group="float")
SAME_TOP1 = Tolerance("top1_agreement", 1.0, group="float16")
INT8_TOP1 = Tolerance("top1_agreement", None, group="int8")


@dataclasses.dataclass(frozen=True)
class ExportSources:
    """What the writers convert from: the float32 classifier, the SavedModel written first, calibration images.

    ``labels`` (the class names, or ``None``) go into the TFLite metadata; ``mean`` and ``std`` (of 0..1
    pixels: the model's preprocessing) are the normalisation the uint8-pixel inputs apply inside and the
    float inputs' metadata states.
    """

    classifier: object
    saved_model_dir: str | None
    representative: object = None
    uint8_signature: bool = True
    labels: tuple | None = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One deployment format.

    ``write(path, sources)`` writes the artifact at ``path`` (a fresh file, or
    a path to create when ``is_directory``); ``runner(path)`` returns
    ``run(images) -> logits`` in the artifact's own runtime; ``uint8_runner``
    (optional) the same through the uint8-pixel signature, verified as
    ``<name>:uint8``; ``inspect(path)`` (optional) returns extra report fields
    and an error that fails the artifact (or ``None``). A ``takes_pixels``
    artifact's ``runner`` is verified on the uint8 pixels the samples came from.
    """

    name: str
    file: str
    write: Callable
    runner: Callable
    tolerance: Tolerance
    is_directory: bool = False
    reads_saved_model: bool = False  # converted from the SavedModel, which is then written first
    needs_calibration: bool = False  # calibrated on representative images
    takes_pixels: bool = False  # its input is uint8 RGB pixels, normalised inside
    uint8_runner: Callable | None = None
    inspect: Callable | None = None


def _write_saved_model(path, sources):
    write_saved_model(sources.classifier, path, sources.uint8_signature, sources.mean, sources.std)


def _tflite(quantization, tolerance, needs_calibration=False, pixels=False):
    """``tflite_<quantization>``, or with ``pixels`` ``tflite_<quantization>_pixels`` (uint8 pixel input)."""
    suffix = "_pixels" if pixels else ""
    return ExportFormat(
        name=f"tflite_{quantization}{suffix}",
        file=f"model_{quantization}{suffix}.tflite",
        write=functools.partial(write_tflite, quantization=quantization, pixels=pixels),
        runner=tflite_runner,
        tolerance=tolerance,
        reads_saved_model=True,
        needs_calibration=needs_calibration,
        takes_pixels=pixels,
        inspect=functools.partial(inspect_tflite, quantization=quantization),
    )


def _tflite_formats(pixels):
    return (
        _tflite("float32", FLOAT_EXACT, pixels=pixels),
        _tflite("float16", SAME_TOP1, pixels=pixels),
        _tflite("dynamic_int8", INT8_TOP1, pixels=pixels),
        _tflite("int8", INT8_TOP1, needs_calibration=True, pixels=pixels),
    )


def _openvino(quantized):
    """``openvino`` (float32, any batch) or ``openvino_int8`` (NNCF, calibrated): an IR folder."""
    return ExportFormat(
        name="openvino_int8" if quantized else "openvino",
        file="openvino_int8" if quantized else "openvino",
        write=write_openvino_int8 if quantized else write_openvino,
        runner=openvino_runner,
        tolerance=INT8_TOP1 if quantized else FLOAT_EXACT,
        is_directory=True,
        reads_saved_model=True,
        needs_calibration=quantized,
        inspect=functools.partial(inspect_openvino, quantized=quantized),
    )


FORMAT_SPECS = (
    ExportFormat(
        name="saved_model",
        file="saved_model",
        write=_write_saved_model,
        runner=saved_model_runner,
        tolerance=FLOAT_EXACT,
        is_directory=True,
        uint8_runner=saved_model_uint8_runner,
    ),
    *_tflite_formats(pixels=False),
    # The same four taking uint8 pixels and normalising inside: what MediaPipe and phone apps feed.
    *_tflite_formats(pixels=True),
    ExportFormat(name="onnx", file="model.onnx", write=write_onnx, runner=onnx_runner, tolerance=FLOAT_EXACT),
    # model.onnx with its weighted MatMuls in int8 (ONNX Runtime's dynamic quantization: no calibration).
    ExportFormat(name="onnx_dynamic_int8", file="model_dynamic_int8.onnx", write=write_onnx_dynamic_int8,
                 runner=onnx_runner, tolerance=INT8_TOP1),
    # OpenVINO IR folders (model.xml + model.bin), converted from the SavedModel; run in float32 on the CPU.
    _openvino(quantized=False),
    _openvino(quantized=True),
)
#: The format names, in report order.
FORMATS = tuple(spec.name for spec in FORMAT_SPECS)
#: Format name -> its file (or folder) in the output folder.
ARTIFACT_FILES = {spec.name: spec.file for spec in FORMAT_SPECS}
#: Format name -> its record; the export reads the records through this mapping.
FORMAT_BY_NAME = {spec.name: spec for spec in FORMAT_SPECS}


def format_spec(name):
    """The record of a format (or of a report row such as ``"saved_model:uint8"``)."""
    return FORMAT_BY_NAME[name.split(":")[0]]


def parse_formats(formats):
    """``"all"``, a comma-separated string or a list -> the format names in report order; ExportError if unknown."""
    if formats is None or formats == "all":
        return list(FORMATS)
    if isinstance(formats, str):
        formats = [f for f in formats.replace(" ", "").split(",") if f]
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(
            f"Unknown export format{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown)) or '(none given)'}; "
            f"accepted: {', '.join(FORMATS)} (or 'all')."
        )
    return [f for f in FORMATS if f in formats]


def tolerance_descriptions(int8_agreement):
    """``report.json``'s ``tolerances``: one entry per tolerance, naming the formats that share it."""
    groups = {}
    for spec in FORMAT_BY_NAME.values():
        groups.setdefault(spec.tolerance, []).append(spec.name)
    return {
        (names[0] if len(names) == 1 else f"{tolerance.group} ({', '.join(names)})"): tolerance.description(
            int8_agreement
        )
        for tolerance, names in groups.items()
    }
