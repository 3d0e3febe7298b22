"""Deployable artifacts of a T2T-ViT classifier, each verified against the Keras model.

``export_model`` turns a Keras classifier (in memory, a ``.keras`` file, or a
variant plus weights) into any of:

==========================  ===================================  ===========================
format                      file in ``output_dir``               passes when (vs. Keras)
==========================  ===================================  ===========================
``saved_model``             ``saved_model/``                     max |logit diff| <= 1e-4
``tflite_float32``          ``model_float32.tflite``             max |logit diff| <= 1e-4
``tflite_float16``          ``model_float16.tflite``             top-1 agreement 100%
``tflite_dynamic_int8``     ``model_dynamic_int8.tflite``        top-1 agreement >= 95%
``tflite_int8``             ``model_int8.tflite``                top-1 agreement >= 95%
``onnx``                    ``model.onnx``                       max |logit diff| <= 1e-4
==========================  ===================================  ===========================

Every artifact outputs ``logits`` and ``probabilities`` (the model's own
classifier activation, softmax when it has none). The SavedModel has two
signatures: ``serving_default`` takes float images normalised as by
``keras_t2t.preprocess_input``; ``serving_uint8`` takes uint8 RGB pixels and
normalises inside. The TFLite models take one image (batch 1, float32; the
full-integer model takes int8 with the input's scale and zero point); the
SavedModel and ONNX take any batch.

After writing, each artifact runs in its own runtime (LiteRT's interpreter
from ``ai-edge-litert``, ``tf.saved_model.load``, onnxruntime) on sample
images and is compared with the Keras model: maximum absolute logit
difference, top-1 agreement, latency at batch 1. The table is printed and
saved as ``report.json`` beside the artifacts, with ``labels.txt`` (one class
name per line, class i on line i+1).

Files are written under a hidden temporary name in ``output_dir`` and renamed
onto their final name only once written and verified, so an interrupted or
failed export never leaves a half-written artifact under a final name. Bad
input (an unreadable model, an unknown format, a folder with no images) raises
``ExportError`` before anything is written.

The TFLite models use builtin ops only (no Select-TF/Flex ops), so they run in
the standard LiteRT interpreter. In the full-integer model every op runs in
int8 except the performer's normalising division (``DIV``): its divisor spans
orders of magnitude across tokens and rounds to zero in int8, which the int8
kernel rejects. It stays a float32 island, as it does under mixed precision.

Export runs on TensorFlow. Called in a JAX or PyTorch process, ``export_model``
saves the model (when given in memory) and re-runs itself in a subprocess with
``KERAS_BACKEND=tensorflow``; ``.keras`` files load on any backend.

Command line: ``python tflite/convert.py`` (or ``python -m keras_t2t.export``),
see ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from keras_t2t.cli_args import positive_int

__all__ = [
    "FORMATS",
    "ARTIFACT_FILES",
    "ExportError",
    "ExportReport",
    "export_model",
    "load_model_for_export",
    "classifier_for_export",
    "tflite_operators",
    "main",
]

FORMATS = ("saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_int8", "onnx")
ARTIFACT_FILES = {
    "saved_model": "saved_model",
    "tflite_float32": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic_int8": "model_dynamic_int8.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
LABELS_FILE = "labels.txt"
REPORT_FILE = "report.json"

FLOAT_LOGIT_ATOL = 1e-4
DEFAULT_INT8_AGREEMENT = 0.95
DEFAULT_NUM_SAMPLES = 16
DEFAULT_NUM_CALIBRATION = 100
DEFAULT_LATENCY_RUNS = 10
DEFAULT_CROP_PCT = 0.9
# Ops the full-integer model keeps in float32 (see the module docstring).
INT8_FLOAT_OPS = ("DIV",)

_EXACT_FORMATS = ("saved_model", "tflite_float32", "onnx")
_SIGNATURE = "serving_default"
_UINT8_SIGNATURE = "serving_uint8"
_INPUT_NAME = "images"


class ExportError(ValueError):
    """Bad input to an export (the model, a format name, an image folder...); nothing was written."""


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------
class ExportReport(dict):
    """What an export wrote and how each artifact compared with the Keras model.

    A dict (the content of ``report.json``) with ``passed`` (all artifacts
    within tolerance), ``artifacts`` (one row each: ``artifact``, ``path``,
    ``size_mb``, ``max_abs_diff``, ``top1_agreement``, ``latency_ms``,
    ``tolerance``, ``passed``, ``error``), and what was compared on.
    """

    @property
    def passed(self):
        return bool(self.get("passed"))

    def row(self, artifact):
        """The row of one artifact (e.g. ``"tflite_int8"`` or ``"saved_model:uint8"``)."""
        for row in self.get("artifacts", []):
            if row["artifact"] == artifact:
                return row
        raise KeyError(f"No artifact {artifact!r} in this report; it has {[r['artifact'] for r in self['artifacts']]}.")

    def table(self):
        return format_table(self.get("reference"), self.get("artifacts", []))

    def __str__(self):
        return self.table()


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)


def format_table(reference, rows):
    """The printed table: artifact, size MB, max diff, top-1 agreement, latency ms at batch 1, result."""
    header = ("artifact", "size MB", "max |diff| logits", "top-1 agree", "latency ms", "tolerance", "result")
    lines = []
    if reference:
        lines.append(
            ("keras (reference)", "-", "0", "100.0%", _fmt(reference.get("latency_ms"), ".1f"), "-", "-")
        )
    for row in rows:
        agreement = row.get("top1_agreement")
        lines.append(
            (
                row["artifact"],
                _fmt(row.get("size_mb"), ".2f"),
                _fmt(row.get("max_abs_diff"), ".2e"),
                "-" if agreement is None else f"{100 * agreement:.1f}%",
                _fmt(row.get("latency_ms"), ".1f"),
                row.get("tolerance", "-"),
                "ok" if row.get("passed") else "FAIL",
            )
        )
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(7)]

    def render(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    out = [render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(render(line) for line in lines)
    for row in rows:
        if row.get("error"):
            out.append(f"{row['artifact']}: {row['error']}")
    return "\n".join(out)


def _tolerance(artifact, int8_agreement):
    """(metric, threshold, text) an artifact must meet."""
    fmt = artifact.split(":")[0]
    if fmt in _EXACT_FORMATS:
        return "max_abs_diff", FLOAT_LOGIT_ATOL, f"max diff <= {FLOAT_LOGIT_ATOL:g}"
    if fmt == "tflite_float16":
        return "top1_agreement", 1.0, "top-1 = 100%"
    return "top1_agreement", float(int8_agreement), f"top-1 >= {100 * float(int8_agreement):g}%"


def _within(metric, threshold, max_abs_diff, agreement):
    if metric == "max_abs_diff":
        return bool(max_abs_diff <= threshold)  # False for NaN
    return bool(agreement >= threshold - 1e-12) and not math.isnan(max_abs_diff)


# --------------------------------------------------------------------------
# Input: the model
# --------------------------------------------------------------------------
def _head_classes(weights):
    """The class count of the head stored in a weights file, or None."""
    path = os.fspath(weights)
    try:
        if path.endswith(".h5"):
            import h5py

            # Keras names h5 groups by layer class: the model's only top-level Dense is the head.
            found = []
            with h5py.File(path, "r") as handle:
                handle.visititems(
                    lambda name, obj: found.append(obj.shape)
                    if re.fullmatch(r"layers/dense(_\d+)?/vars/0", name) and len(getattr(obj, "shape", ())) == 2
                    else None
                )
            return int(found[0][1]) if found else None
        from keras_t2t.weights import read_state_dict

        state, _ = read_state_dict(path)
        head = state.get("head.weight", state.get("module.head.weight"))
        return None if head is None else int(np.shape(head)[0])
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file is bad input
        raise ExportError(f"Cannot read the weights {path!r}: {type(error).__name__}: {error}") from error


def _check_model_argument(model, variant, weights):
    """The checks on what to export that need no loading."""
    import keras

    if model is not None and variant is not None:
        raise ExportError("Give either a model (a keras.Model or a '.keras' path) or variant + weights, not both.")
    if isinstance(model, keras.Model):
        return
    if model is not None:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ExportError(f"Model file {path!r} does not exist.")
        if not path.endswith(".keras"):
            raise ExportError(
                f"{path!r} is not a '.keras' model file. For a '.weights.h5' file or an authors' checkpoint, "
                "give the variant too (--variant NAME --weights PATH)."
            )
        return
    if variant is None:
        raise ExportError("Nothing to export: give a model (a '.keras' file) or a variant name with weights.")
    from keras_t2t.variants import ALL_VARIANTS

    if variant not in ALL_VARIANTS:
        raise ExportError(f"Unknown T2T-ViT variant {variant!r}; accepted: {', '.join(ALL_VARIANTS)}.")
    if weights is None:
        raise ExportError(
            f"--variant {variant} needs --weights PATH ('.weights.h5' or an authors' '.pth.tar'): an "
            "untrained model is not worth deploying."
        )
    if not os.path.isfile(weights):
        raise ExportError(f"Weights file {os.fspath(weights)!r} does not exist.")


def load_model_for_export(model=None, variant=None, weights=None, image_size=None, classes=None):
    """The Keras model to export: a ``keras.Model``, a ``.keras`` path, or ``variant`` + ``weights``.

    ``weights`` is a ``.weights.h5`` file or an authors' checkpoint (``.pth.tar``);
    the class count comes from its head unless ``classes`` is given, the image
    size from the checkpoint (or 224) unless ``image_size`` is given. Raises
    ``ExportError`` naming the file when it cannot be read.
    """
    import keras

    _check_model_argument(model, variant, weights)
    if isinstance(model, keras.Model):
        return model
    if model is not None:
        path = os.fspath(model)
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - a corrupt file can fail in many ways
            raise ExportError(
                f"Cannot load the model {path!r} ({type(error).__name__}: {error}). Is it a complete '.keras' file?"
            ) from error
    from keras_t2t.variants import create_model

    kwargs = {}
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        kwargs["input_shape"] = (int(height), int(width), 3)
    kwargs["classes"] = int(classes) if classes is not None else (_head_classes(weights) or 1000)
    try:
        built = create_model(variant, weights=weights, verbose=False, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise ExportError(
            f"Cannot build {variant} with the weights {os.fspath(weights)!r}: {type(error).__name__}: {error}"
        ) from error
    report = getattr(built, "weights_report", None) or {}
    if report.get("head_dropped"):
        raise ExportError(
            f"The weights {os.fspath(weights)!r} did not load a classifier head into {variant} "
            f"({report['head_dropped']}); pass the right --classes."
        )
    return built


def classifier_for_export(model):
    """A float32 functional model ``images -> {"logits", "probabilities"}`` sharing ``model``'s weights.

    The logits are the input of the model's final ``predictions`` activation
    (the T2T-ViT head); ``probabilities`` applies that activation, or softmax
    when the model outputs logits. A mixed-precision T2T-ViT is rebuilt in
    float32 first (its variables are float32 already).
    """
    import keras

    if getattr(model, "include_top", True) is False:
        raise ExportError(
            f"{model.name} has no classifier head (include_top=False); export needs a model that outputs class "
            "scores."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"Export needs a model with one image input and one score output; {model.name} has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    if model.dtype_policy.name != "float32" and hasattr(type(model), "from_config"):
        config = model.get_config()
        config["dtype"] = "float32"
        rebuilt = type(model).from_config(config)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(v is None for v in shape):
        raise ExportError(f"Export needs a fixed (height, width, channels) image input; {model.name} takes {shape}.")
    if shape[-1] != 3:
        raise ExportError(f"Export verifies on RGB images; {model.name} takes {shape[-1]} channels.")

    activation = None
    logits = model.outputs[0]
    try:
        final = model.get_layer("predictions")
    except ValueError:
        final = None
    if isinstance(final, keras.layers.Activation) and final.output is model.outputs[0]:
        logits = final.input
        activation = final.activation
    if activation is None or activation is keras.activations.linear:
        activation = keras.activations.softmax
    if len(logits.shape) != 2:
        raise ExportError(f"Export needs class scores of shape (batch, classes); {model.name} gives {logits.shape}.")

    inputs = keras.Input(shape=shape, name=_INPUT_NAME)
    scores = keras.Model(model.inputs[0], logits, name=f"{model.name}_logits")(inputs)
    outputs = {
        "logits": keras.layers.Identity(name="logits")(scores),
        "probabilities": keras.layers.Activation(activation, name="probabilities")(scores),
    }
    return keras.Model(inputs, outputs, name=model.name)


# --------------------------------------------------------------------------
# Input: images
# --------------------------------------------------------------------------
def _image_files(root, what):
    from keras_t2t.evaluation import IMAGE_EXTENSIONS

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ExportError(f"The {what} folder {root!r} does not exist or is not a folder.")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, name)
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not found:
        raise ExportError(
            f"The {what} folder {root!r} holds no image files (looked recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}, any case)."
        )
    return found


def _evenly_spaced(items, count):
    if count >= len(items):
        return list(items)
    index = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(np.int64))
    return [items[i] for i in index]


def _load_files(paths, image_hw, crop_pct):
    from keras_t2t.evaluation import load_image

    try:
        return np.stack([load_image(p, image_size=image_hw, crop_pct=crop_pct) for p in paths])
    except ValueError as error:
        raise ExportError(str(error)) from error


def _builtin_sample_images(count, image_hw, crop_pct, seed=0):
    """Deterministic square crops of the two photographs bundled with scikit-learn (no download)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from keras_t2t.evaluation import eval_transform

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 4, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(eval_transform(Image.fromarray(np.ascontiguousarray(crop)), image_hw, crop_pct))
    return np.stack(out)


def _tfds_images(spec, count, image_hw, crop_pct, data_dir=None, download=False):
    """``count`` images of a TFDS dataset ``NAME[:SPLIT]`` (split default ``train``), shuffled with a fixed seed."""
    from PIL import Image

    from keras_t2t.evaluation import eval_transform

    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ExportError(
            "A TFDS representative set needs tensorflow-datasets: pip install tensorflow-datasets."
        ) from error
    name, _, split = str(spec).partition(":")
    split = split or "train"
    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=False)
        dataset = dataset.shuffle(min(10 * count, 10000), seed=0, reshuffle_each_iteration=False).take(count)
        examples = list(tfds.as_numpy(dataset))
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds
        hint = "" if download else " (nothing is downloaded: prepare it with `tfds build` or pass --tfds-download)"
        raise ExportError(
            f"Cannot read the TFDS dataset {spec!r}{hint}: {type(error).__name__}: {error}"
        ) from error
    images = []
    for example in examples:
        image = example["image"] if isinstance(example, dict) else example[0]
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        images.append(eval_transform(Image.fromarray(image.astype(np.uint8)), image_hw, crop_pct))
    if not images:
        raise ExportError(f"The TFDS dataset {spec!r} gave no images.")
    return np.stack(images)


def _to_uint8(images):
    """Normalised images back to the uint8 pixels they came from (for the uint8 signature)."""
    from keras_t2t.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    pixels = (images * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)) * 255.0
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Writing files atomically
# --------------------------------------------------------------------------
def _temp_path(output_dir, final_name, directory=False):
    prefix = f".{final_name}.partial-"
    if directory:
        return tempfile.mkdtemp(dir=output_dir, prefix=prefix)
    fd, path = tempfile.mkstemp(dir=output_dir, prefix=prefix)
    os.close(fd)
    return path


def _remove(path):
    if path is None:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _install(temp, final):
    """Renames ``temp`` onto ``final``, replacing what is there (a directory too) without a gap of half-files."""
    # mkstemp/mkdtemp make private files; the artifact gets the permissions of any new file.
    os.chmod(temp, (0o777 if os.path.isdir(temp) else 0o666) & ~_umask())
    if os.path.isdir(final) and not os.path.islink(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.old-")
        os.rmdir(trash)
        os.rename(final, trash)
        os.rename(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(temp, final)


def _write_text_atomic(path, text):
    temp = _temp_path(os.path.dirname(path), os.path.basename(path))
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _install(temp, path)
    except BaseException:
        _remove(temp)
        raise


def _size_mb(path):
    if os.path.isdir(path):
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    else:
        total = os.path.getsize(path)
    return total / 2**20


# --------------------------------------------------------------------------
# Converters (TensorFlow backend)
# --------------------------------------------------------------------------
def _write_saved_model(classifier, path, uint8_signature):
    import keras
    import tensorflow as tf

    from keras_t2t.layers import tracing_for_export
    from keras_t2t.preprocessing import preprocess_input

    shape = (None,) + tuple(classifier.inputs[0].shape[1:])
    # No archive.track(classifier): the endpoints track the variables they use, and tracking the
    # model as well would store every variable twice (Keras 3.15).
    archive = keras.export.ExportArchive()

    def serve(images):
        return classifier(images, training=False)

    def serve_uint8(images):
        return classifier(preprocess_input(images), training=False)

    # Query-chunked attention (T2T-ViT_t) traced as plain slices (no TensorList ops for TFLite),
    # and every attention's softmax as one op (TFLite's SOFTMAX kernel).
    with tracing_for_export():
        archive.add_endpoint(
            _SIGNATURE, serve, input_signature=[tf.TensorSpec(shape, tf.float32, name=_INPUT_NAME)]
        )
        if uint8_signature:
            archive.add_endpoint(
                _UINT8_SIGNATURE, serve_uint8, input_signature=[tf.TensorSpec(shape, tf.uint8, name=_INPUT_NAME)]
            )
        archive.write_out(path, verbose=False)


def _convert_tflite(saved_model_dir, fmt, representative=None):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[_SIGNATURE])
    # Builtin ops only: the LiteRT interpreter has no Select-TF (Flex) kernels.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "tflite_float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "tflite_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({_INPUT_NAME: image[None]} for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        # Selective quantization: everything int8 (inputs and outputs too) but INT8_FLOAT_OPS.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: iter(()),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(INT8_FLOAT_OPS), fully_quantize=True
            ),
        )
        return debugger.get_nondebug_quantized_model()
    return converter.convert()


_TF2ONNX_PATCHED = False


def _register_tf2onnx_erfc():
    """tf2onnx maps no handler to TensorFlow's ``Erfc``, which exact GELU lowers to; ONNX has ``Erf``."""
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


def _export_onnx(classifier, path):
    import importlib.util

    if importlib.util.find_spec("tf2onnx") is None:
        raise RuntimeError("ONNX export needs tf2onnx, onnx and onnxruntime: pip install 'keras-t2t[export]'")
    from keras_t2t.layers import tracing_for_export

    _register_tf2onnx_erfc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracing_for_export():
            classifier.export(path, format="onnx", verbose=False)


# --------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------
def tflite_operators(path_or_bytes):
    """``{op name: count}`` of a ``.tflite`` model; custom ops (Flex ops among them) as ``"CUSTOM:<code>"``."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = path_or_bytes
    if not isinstance(buffer, (bytes, bytearray)):
        with open(buffer, "rb") as handle:
            buffer = handle.read()
    model = schema.Model.GetRootAsModel(buffer, 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.CustomCode() or b"").decode()
        codes.append(name)
    counts = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            name = codes[graph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _tflite_float_ops(path):
    """``{op name: count}`` of the ops computing in float32 (DEQUANTIZE aside) in a quantized model."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as handle:
        buffer = handle.read()
    model = schema.Model.GetRootAsModel(buffer, 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    counts = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            outputs = [graph.Tensors(op.Outputs(i)).Type() for i in range(op.OutputsLength())]
            if name not in ("DEQUANTIZE", "SHAPE") and schema.TensorType.FLOAT32 in outputs:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _threads():
    return max(1, os.cpu_count() or 1)


def _tflite_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=_threads())
    runner = interpreter.get_signature_runner(_SIGNATURE)
    input_detail = runner.get_input_details()[_INPUT_NAME]
    output_detail = runner.get_output_details()["logits"]

    def run(images):
        x = images
        if input_detail["dtype"] != np.float32:
            scale, zero = input_detail["quantization"]
            info = np.iinfo(input_detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(input_detail["dtype"])
        logits = runner(**{_INPUT_NAME: x})["logits"]
        if output_detail["dtype"] != np.float32:
            scale, zero = output_detail["quantization"]
            logits = (logits.astype(np.float32) - zero) * scale
        return np.asarray(logits, np.float32)

    return run


def _saved_model_runner(path, signature):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    function = loaded.signatures[signature]

    def run(images):
        return function(**{_INPUT_NAME: tf.constant(images)})["logits"].numpy()

    run.keep_alive = loaded
    return run


def _onnx_runner(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images):
        return session.run(["logits"], {input_name: images})[0]

    return run


def _run_all(run, images):
    return np.concatenate([run(images[i : i + 1]) for i in range(len(images))])


def _latency_ms(run, image, runs):
    run(image)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _compare(artifact, path, run, images, reference, int8_agreement, latency_runs):
    logits = _run_all(run, images)
    diff = float(np.max(np.abs(logits.astype(np.float64) - reference)))
    agreement = float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))
    metric, threshold, text = _tolerance(artifact, int8_agreement)
    return {
        "artifact": artifact,
        "path": path,
        "size_mb": None,
        "max_abs_diff": diff,
        "top1_agreement": agreement,
        "latency_ms": _latency_ms(run, images[:1], latency_runs),
        "tolerance": text,
        "passed": _within(metric, threshold, diff, agreement),
        "error": None,
    }


def _failed_row(artifact, error, int8_agreement):
    return {
        "artifact": artifact,
        "path": ARTIFACT_FILES[artifact],
        "size_mb": None,
        "max_abs_diff": None,
        "top1_agreement": None,
        "latency_ms": None,
        "tolerance": _tolerance(artifact, int8_agreement)[2],
        "passed": False,
        "error": error,
    }


# --------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------
def _parse_formats(formats):
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


def _resolve_labels(labels, classes):
    if labels is None:
        if classes == 1000:
            from keras_t2t.imagenet import imagenet_class_names

            return list(imagenet_class_names()), "imagenet"
        return [f"class_{i}" for i in range(classes)], "generic (no labels given)"
    source = "list"
    if isinstance(labels, (str, os.PathLike)):
        source = os.fspath(labels)
        try:
            with open(labels, encoding="utf-8") as handle:
                labels = [line.rstrip("\n") for line in handle if line.strip()]
        except OSError as error:
            raise ExportError(f"Cannot read the labels file {os.fspath(labels)!r}: {error}") from error
    labels = [str(label) for label in labels]
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels were given for a model with {classes} classes.")
    if any("\n" in label for label in labels):
        raise ExportError("A label contains a line break; labels.txt holds one label per line.")
    return labels, source


def _machine():
    name = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    import platform

    return {"cpu": name or platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def _versions():
    from importlib import metadata

    out = {}
    for package in ("keras", "tensorflow", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def export_model(
    model=None,
    output_dir=None,
    *,
    variant=None,
    weights=None,
    image_size=None,
    classes=None,
    formats="all",
    representative_dir=None,
    representative_tfds=None,
    tfds_data_dir=None,
    tfds_download=False,
    num_calibration=DEFAULT_NUM_CALIBRATION,
    sample_dir=None,
    num_samples=DEFAULT_NUM_SAMPLES,
    crop_pct=DEFAULT_CROP_PCT,
    int8_agreement=DEFAULT_INT8_AGREEMENT,
    labels=None,
    uint8_signature=True,
    latency_runs=DEFAULT_LATENCY_RUNS,
    overwrite=False,
    verbose=True,
):
    """Writes the chosen deployment formats of a classifier into ``output_dir`` and verifies each.

    Args:
        model: a ``keras.Model`` or a path to a ``.keras`` file (saved on any backend).
        output_dir: the folder for the artifacts, ``labels.txt`` and ``report.json``.
        variant, weights: instead of ``model``: a variant name (``"t2t_vit_7"``...)
            and a ``.weights.h5`` file or an authors' checkpoint; ``image_size``
            and ``classes`` override what the weights imply.
        formats: ``"all"`` or a list (or comma-separated string) from ``FORMATS``.
        representative_dir / representative_tfds: the calibration images of
            ``tflite_int8``: a folder (searched recursively) or a TFDS dataset
            ``"NAME[:SPLIT]"`` (read from ``tfds_data_dir``; downloaded only with
            ``tfds_download``). ``num_calibration`` images, evenly spaced.
        sample_dir, num_samples: the images every artifact is compared on
            (default: crops of the photographs bundled with scikit-learn).
        crop_pct: the evaluation resize/crop of those images (spec section 11).
        int8_agreement: the top-1 agreement the int8 models must reach (0..1).
        labels: class names (a list or a file, one per line); default the
            ImageNet names for 1000 classes, ``class_<i>`` otherwise.
        uint8_signature: add the SavedModel signature ``serving_uint8``.
        latency_runs: timed runs per artifact (median reported).
        overwrite: replace artifacts already in ``output_dir``.

    Returns:
        ``ExportReport`` (also written as ``output_dir/report.json``);
        ``report.passed`` tells whether every artifact is within tolerance.
        An artifact outside tolerance (or whose conversion failed) is not
        kept. Raises ``ExportError`` for bad input, before writing anything.
    """
    import keras

    if output_dir is None:
        raise ExportError("output_dir is required.")
    options = dict(
        variant=variant,
        weights=weights,
        image_size=image_size,
        classes=classes,
        formats=formats,
        representative_dir=representative_dir,
        representative_tfds=representative_tfds,
        tfds_data_dir=tfds_data_dir,
        tfds_download=tfds_download,
        num_calibration=num_calibration,
        sample_dir=sample_dir,
        num_samples=num_samples,
        crop_pct=crop_pct,
        int8_agreement=int8_agreement,
        labels=labels,
        uint8_signature=uint8_signature,
        latency_runs=latency_runs,
        overwrite=overwrite,
    )
    # === every check before anything is written (and before another process is started) ===
    _check_model_argument(model, variant, weights)
    plan = _plan(os.fspath(output_dir), **options)
    source = load_model_for_export(model, variant=variant, weights=weights, image_size=image_size, classes=classes)
    classifier = classifier_for_export(source)
    _resolve_labels(labels, int(classifier.outputs[0].shape[-1]))
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(model, source, output_dir, options, verbose)
    return _export(source, classifier, plan, model_source=_describe_source(model, variant, weights), verbose=verbose)


def _check_options(formats, num_calibration, num_samples, int8_agreement, latency_runs, crop_pct):
    formats = _parse_formats(formats)
    for name, value in (("num_calibration", num_calibration), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ExportError(f"{name} must be a positive integer; got {value!r}.")
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, (int, np.integer)) or latency_runs < 1:
        raise ExportError(f"latency_runs must be a positive integer; got {latency_runs!r}.")
    if not 0.0 <= float(int8_agreement) <= 1.0:
        raise ExportError(f"int8_agreement is a fraction in [0, 1]; got {int8_agreement!r}.")
    if not 0.0 < float(crop_pct) <= 1.0:
        raise ExportError(f"crop_pct must be in (0, 1]; got {crop_pct!r}.")
    return formats


def _plan(output_dir, *, formats, representative_dir, representative_tfds, num_calibration, sample_dir, num_samples,
          crop_pct, int8_agreement, latency_runs, overwrite, **options):
    """The checked options, the image files found, and the output folder's state; raises ExportError."""
    formats = _check_options(formats, num_calibration, num_samples, int8_agreement, latency_runs, crop_pct)
    if "tflite_int8" in formats and not (representative_dir or representative_tfds):
        raise ExportError(
            "tflite_int8 is calibrated on a representative set: give representative_dir (--representative-dir "
            "DIR) or representative_tfds (--representative-tfds NAME[:SPLIT]), or leave tflite_int8 out of the "
            "formats."
        )
    if representative_dir and representative_tfds:
        raise ExportError("Give one representative set: a folder or a TFDS dataset, not both.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"output_dir {output_dir!r} exists and is not a folder.")
    targets = [ARTIFACT_FILES[f] for f in formats] + [LABELS_FILE, REPORT_FILE]
    existing = [t for t in targets if os.path.lexists(os.path.join(output_dir, t))]
    if existing and not overwrite:
        raise ExportError(
            f"{output_dir!r} already holds {', '.join(existing)}; pass overwrite=True (--overwrite) to replace them."
        )
    return dict(
        options,
        output_dir=output_dir,
        formats=formats,
        representative_dir=representative_dir,
        representative_tfds=representative_tfds,
        representative_files=(
            _image_files(representative_dir, "representative")
            if "tflite_int8" in formats and representative_dir
            else None
        ),
        num_calibration=int(num_calibration),
        sample_dir=sample_dir,
        sample_files=_image_files(sample_dir, "sample") if sample_dir else None,
        num_samples=int(num_samples),
        crop_pct=float(crop_pct),
        int8_agreement=float(int8_agreement),
        latency_runs=int(latency_runs),
        overwrite=overwrite,
    )


def _write_artifact(fmt, path, classifier, saved_model_dir, representative):
    if fmt == "onnx":
        _export_onnx(classifier, path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TF's own deprecation notices about tf.lite
        content = _convert_tflite(saved_model_dir, fmt, representative)
    with open(path, "wb") as handle:
        handle.write(content)


def _verify(fmt, path, samples, reference, samples_uint8, reference_uint8, int8_agreement, latency_runs):
    """The report rows of one written artifact, run in its own runtime."""
    name = ARTIFACT_FILES[fmt]
    try:
        if fmt == "saved_model":
            run = _saved_model_runner(path, _SIGNATURE)
            rows = [_compare(fmt, name, run, samples, reference, int8_agreement, latency_runs)]
            if reference_uint8 is not None:
                run = _saved_model_runner(path, _UINT8_SIGNATURE)
                rows.append(
                    _compare(
                        f"{fmt}:uint8", f"{name} [{_UINT8_SIGNATURE}]", run, samples_uint8, reference_uint8,
                        int8_agreement, latency_runs,
                    )
                )
        elif fmt == "onnx":
            rows = [_compare(fmt, name, _onnx_runner(path), samples, reference, int8_agreement, latency_runs)]
        else:
            row = _compare(fmt, name, _tflite_runner(path), samples, reference, int8_agreement, latency_runs)
            row["ops"] = tflite_operators(path)
            custom = [op for op in row["ops"] if op.startswith("CUSTOM")]
            if custom:
                row["passed"] = False
                row["error"] = f"non-builtin ops {custom}: the LiteRT interpreter runs builtin ops only"
            if fmt == "tflite_int8":
                row["float_ops"] = _tflite_float_ops(path)
            rows = [row]
    except Exception as error:  # noqa: BLE001 - an artifact that does not run fails its check
        rows = [_failed_row(fmt, f"does not run in its runtime: {type(error).__name__}: {error}", int8_agreement)]
    size = _size_mb(path)
    for row in rows:
        row["size_mb"] = size
    return rows


def _export(source, classifier, plan, model_source, verbose):
    say = print if verbose else (lambda *a, **k: None)
    output_dir, formats = plan["output_dir"], plan["formats"]
    crop_pct, int8_agreement, latency_runs = plan["crop_pct"], plan["int8_agreement"], plan["latency_runs"]
    uint8_signature = plan["uint8_signature"]
    height, width, _ = (int(v) for v in classifier.inputs[0].shape[1:])
    num_classes = int(classifier.outputs[0].shape[-1])
    label_list, label_source = _resolve_labels(plan["labels"], num_classes)

    if plan["sample_files"]:
        samples = _load_files(_evenly_spaced(plan["sample_files"], plan["num_samples"]), (height, width), crop_pct)
        sample_source = os.path.abspath(plan["sample_dir"])
    else:
        samples = _builtin_sample_images(plan["num_samples"], (height, width), crop_pct)
        sample_source = "builtin: crops of scikit-learn's sample photographs (china.jpg, flower.jpg)"
    representative, representative_source = None, None
    if "tflite_int8" in formats:
        if plan["representative_files"]:
            chosen = _evenly_spaced(plan["representative_files"], plan["num_calibration"])
            representative = _load_files(chosen, (height, width), crop_pct)
            representative_source = os.path.abspath(plan["representative_dir"])
        else:
            representative = _tfds_images(
                plan["representative_tfds"], plan["num_calibration"], (height, width), crop_pct,
                plan["tfds_data_dir"], plan["tfds_download"],
            )
            representative_source = f"tfds:{plan['representative_tfds']}"

    # === the reference: the Keras model itself ===
    def keras_run(images):
        return np.asarray(classifier.predict_on_batch(images)["logits"], np.float32)

    reference = np.concatenate([keras_run(samples[i : i + 8]) for i in range(0, len(samples), 8)]).astype(np.float64)
    samples_uint8 = _to_uint8(samples)
    if uint8_signature and "saved_model" in formats:
        from keras_t2t.preprocessing import preprocess_input

        reference_uint8 = np.concatenate(
            [keras_run(preprocess_input(samples_uint8[i : i + 8])) for i in range(0, len(samples), 8)]
        ).astype(np.float64)
    reference_info = {"latency_ms": _latency_ms(keras_run, samples[:1], latency_runs)}

    checks = dict(
        samples=samples,
        reference=reference,
        samples_uint8=samples_uint8,
        reference_uint8=reference_uint8 if uint8_signature and "saved_model" in formats else None,
        int8_agreement=int8_agreement,
        latency_runs=latency_runs,
    )

    created_dir = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    temps = []
    rows = []
    try:
        say(f"keras_t2t.export: {classifier.name} ({height}x{width}, {num_classes} classes) -> {output_dir}")
        start = time.perf_counter()
        saved_model_temp = _temp_path(output_dir, ARTIFACT_FILES["saved_model"], directory=True)
        temps.append(saved_model_temp)
        os.rmdir(saved_model_temp)  # the SavedModel writer wants to make the folder itself
        _write_saved_model(classifier, saved_model_temp, uint8_signature)
        saved_model_seconds = time.perf_counter() - start

        # The SavedModel goes last: the TFLite converter reads it from its temporary folder.
        for fmt in sorted(formats, key=lambda f: f == "saved_model"):
            say(f"  {fmt}: writing...", flush=True)
            start = time.perf_counter()
            if fmt == "saved_model":
                temp = saved_model_temp
            else:
                temp = _temp_path(output_dir, ARTIFACT_FILES[fmt])
                temps.append(temp)
            try:
                if fmt != "saved_model":
                    _write_artifact(fmt, temp, classifier, saved_model_temp, representative)
            except Exception as error:  # noqa: BLE001 - recorded in the report; the other formats go on
                fmt_rows = [_failed_row(fmt, f"conversion failed: {type(error).__name__}: {error}", int8_agreement)]
            else:
                seconds = saved_model_seconds if fmt == "saved_model" else time.perf_counter() - start
                fmt_rows = _verify(fmt, temp, **checks)
                for row in fmt_rows:
                    row["convert_seconds"] = seconds
            rows.extend(fmt_rows)
            final = os.path.join(output_dir, ARTIFACT_FILES[fmt])
            passed = all(row["passed"] for row in fmt_rows)
            if passed:
                _install(temp, final)
                temps.remove(temp)
            else:
                _remove(final)  # an earlier export's file would contradict this report
            say(f"  {fmt}: {'ok' if passed else 'FAILED'} ({time.perf_counter() - start:.1f} s)", flush=True)

        rows.sort(key=lambda row: FORMATS.index(row["artifact"].split(":")[0]))
        report = ExportReport(
            created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            passed=all(row["passed"] for row in rows),
            model={
                "name": classifier.name,
                "source": model_source,
                "input_shape": [height, width, 3],
                "classes": num_classes,
                "parameters": int(sum(int(np.prod(v.shape)) for v in source.weights)),
            },
            samples={"source": sample_source, "count": int(len(samples)), "crop_pct": float(crop_pct)},
            representative=None
            if representative is None
            else {"source": representative_source, "count": int(len(representative))},
            labels={"file": LABELS_FILE, "source": label_source},
            tolerances={
                "float (saved_model, tflite_float32, onnx)": f"max |logit diff| <= {FLOAT_LOGIT_ATOL:g}",
                "tflite_float16": "top-1 agreement 100%",
                "int8 (tflite_dynamic_int8, tflite_int8)": f"top-1 agreement >= {100 * float(int8_agreement):g}%",
            },
            reference=reference_info,
            artifacts=rows,
            machine=_machine(),
            versions=_versions(),
        )
        _write_text_atomic(os.path.join(output_dir, LABELS_FILE), "\n".join(label_list) + "\n")
        _write_text_atomic(os.path.join(output_dir, REPORT_FILE), json.dumps(report, indent=2) + "\n")
    except BaseException:
        for temp in temps:
            _remove(temp)
        temps = []
        if created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)  # only when empty
        raise
    finally:
        for temp in temps:
            _remove(temp)
    say(report.table())
    verdict = "all artifacts verified" if report.passed else "VERIFICATION FAILED"
    say(f"{verdict}; report: {os.path.join(output_dir, REPORT_FILE)}")
    return report


def _describe_source(model, variant, weights):
    if variant is not None:
        return f"{variant} + {os.path.abspath(os.fspath(weights))}"
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(os.fspath(model))
    return "in-memory keras.Model"


# --------------------------------------------------------------------------
# Another backend: re-run in a TensorFlow process
# --------------------------------------------------------------------------
def _export_in_tensorflow_process(model, source, output_dir, options, verbose):
    """Runs the export in ``python -m keras_t2t.export`` with ``KERAS_BACKEND=tensorflow``; its report."""
    import keras

    with tempfile.TemporaryDirectory(prefix="keras_t2t_export_") as scratch:
        if isinstance(model, keras.Model):
            # Saved from this backend, loaded on TensorFlow: a '.keras' file holds no backend code.
            path = os.path.join(scratch, f"{source.name}.keras")
            source.save(path)
            model = path
        options = dict(options)
        if options.get("labels") is not None and not isinstance(options["labels"], (str, os.PathLike)):
            labels_path = os.path.join(scratch, LABELS_FILE)
            with open(labels_path, "w", encoding="utf-8") as handle:
                handle.write("\n".join(str(label) for label in options["labels"]) + "\n")
            options["labels"] = labels_path
        argv = _to_argv(model, output_dir, options) + ([] if verbose else ["--quiet"])
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        stderr_path = os.path.join(scratch, "stderr.txt")
        with open(stderr_path, "w+", encoding="utf-8", errors="replace") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "keras_t2t.export", *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            try:
                for line in process.stdout:
                    if verbose:
                        print(line, end="", flush=True)
                returncode = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
            stderr.seek(0)
            errors = stderr.read()
    if returncode == 2:
        messages = [line for line in errors.splitlines() if ": error: " in line]
        raise ExportError(messages[-1].split(": error: ", 1)[1] if messages else errors[-2000:])
    report_path = os.path.join(os.fspath(output_dir), REPORT_FILE)
    if returncode in (0, 1) and os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            return ExportReport(json.load(handle))
    raise RuntimeError(f"The TensorFlow export process failed (exit code {returncode}):\n{errors[-4000:]}")


def _to_argv(model, output_dir, options):
    argv = ["--output-dir", os.fspath(output_dir)]
    if model is not None:
        argv += ["--model", os.fspath(model)]
    formats = options["formats"]
    argv += ["--formats", formats if isinstance(formats, str) else ",".join(formats)]
    for key in (
        "variant",
        "weights",
        "classes",
        "representative_dir",
        "representative_tfds",
        "tfds_data_dir",
        "num_calibration",
        "sample_dir",
        "num_samples",
        "crop_pct",
        "int8_agreement",
        "labels",
        "latency_runs",
    ):
        if options.get(key) is not None:
            value = options[key]
            argv += ["--" + key.replace("_", "-"), os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    if options.get("image_size") is not None:
        size = options["image_size"]
        argv += ["--image-size", str(size) if isinstance(size, int) else f"{size[0]},{size[1]}"]
    for key, flag in (("tfds_download", "--tfds-download"), ("overwrite", "--overwrite")):
        if options.get(key):
            argv.append(flag)
    if not options.get("uint8_signature", True):
        argv.append("--no-uint8-signature")
    return argv


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HEIGHT,WIDTH, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HEIGHT,WIDTH, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _agreement(text):
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction like 0.95 or a percentage like 95%, got {text!r}"
        ) from None
    if text.endswith("%") or value > 1.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1] (or 0%..100%), got {text!r}")
    return value


def build_parser(prog="python tflite/convert.py"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export a T2T-ViT classifier to SavedModel, TFLite (float32, float16, dynamic-range int8, "
            "full-integer int8) and ONNX, then run every artifact in its own runtime and compare it with the "
            "Keras model. Writes the artifacts, labels.txt and report.json into --output-dir. Exit code 0: all "
            "verified; 1: an artifact outside its tolerance (it is not kept); 2: bad input (nothing written)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a '.keras' model file (saved on any backend)")
    source.add_argument("--variant", help="a keras_t2t variant name (t2t_vit_7, ...); needs --weights")
    parser.add_argument("--weights", help="with --variant: a '.weights.h5' file or an authors' '.pth.tar' checkpoint")
    parser.add_argument("--image-size", type=_image_size, help="with --variant: N or H,W (default: the weights')")
    parser.add_argument(
        "--classes", type=positive_int, help="with --variant: class count (default: the weights' head)"
    )
    parser.add_argument("--output-dir", required=True, help="where the artifacts, labels.txt and report.json go")
    parser.add_argument(
        "--formats",
        default="all",
        help=f"comma-separated, from: {', '.join(FORMATS)}; or 'all' (default)",
    )
    parser.add_argument("--representative-dir", help="image folder (searched recursively) to calibrate tflite_int8")
    parser.add_argument("--representative-tfds", help="or a TFDS dataset NAME[:SPLIT] to calibrate tflite_int8")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir for --representative-tfds")
    parser.add_argument("--tfds-download", action="store_true", help="let TFDS download the dataset if missing")
    parser.add_argument(
        "--num-calibration", type=positive_int, default=DEFAULT_NUM_CALIBRATION,
        help=f"calibration images, evenly spaced over the set (default {DEFAULT_NUM_CALIBRATION})",
    )
    parser.add_argument(
        "--sample-dir",
        help="image folder to verify on (default: crops of the photographs bundled with scikit-learn)",
    )
    parser.add_argument(
        "--num-samples", type=positive_int, default=DEFAULT_NUM_SAMPLES,
        help=f"images to verify on (default {DEFAULT_NUM_SAMPLES})",
    )
    parser.add_argument("--crop-pct", type=float, default=DEFAULT_CROP_PCT, help="eval resize/crop (default 0.9)")
    parser.add_argument(
        "--int8-agreement", type=_agreement, default=DEFAULT_INT8_AGREEMENT,
        help="top-1 agreement the int8 models must reach, e.g. 0.95 or 95%% (default 95%%)",
    )
    parser.add_argument("--labels", help="class names, one per line (default: ImageNet's for 1000 classes)")
    parser.add_argument(
        "--no-uint8-signature", dest="uint8_signature", action="store_false",
        help="leave out the SavedModel signature that takes uint8 pixels",
    )
    parser.add_argument(
        "--latency-runs", type=positive_int, default=DEFAULT_LATENCY_RUNS,
        help=f"timed runs per artifact at batch 1, median reported (default {DEFAULT_LATENCY_RUNS})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace artifacts already in --output-dir")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    return parser


def main(argv=None, prog="python tflite/convert.py"):
    """Command-line entry point; returns the exit status (0 verified, 1 verification failed, 2 bad input)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.variant is not None and not args.weights:
        parser.error("--variant needs --weights PATH")
    if args.model is not None and (args.weights or args.image_size or args.classes):
        parser.error("--weights, --image-size and --classes go with --variant, not --model")
    try:
        report = export_model(
            args.model,
            args.output_dir,
            variant=args.variant,
            weights=args.weights,
            image_size=args.image_size,
            classes=args.classes,
            formats=args.formats,
            representative_dir=args.representative_dir,
            representative_tfds=args.representative_tfds,
            tfds_data_dir=args.tfds_data_dir,
            tfds_download=args.tfds_download,
            num_calibration=args.num_calibration,
            sample_dir=args.sample_dir,
            num_samples=args.num_samples,
            crop_pct=args.crop_pct,
            int8_agreement=args.int8_agreement,
            labels=args.labels,
            uint8_signature=args.uint8_signature,
            latency_runs=args.latency_runs,
            overwrite=args.overwrite,
            verbose=not args.quiet,
        )
    except ExportError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m keras_t2t.export"))
