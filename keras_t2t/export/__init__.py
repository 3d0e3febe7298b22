"""Deployable artifacts of a T2T-ViT classifier, each verified against the Keras model.

``export_model`` turns a Keras classifier (in memory, or anything
``keras_t2t.resolve.resolve_model`` reads: a ``.keras`` file, a release preset
name, a preset folder, an authors' checkpoint, a model name plus weights) into
any of:

==========================  ===================================  ===========================
format                      file in ``output_dir``               passes when (vs. Keras)
==========================  ===================================  ===========================
``saved_model``             ``saved_model/``                     max |logit diff| <= 1e-4
``tflite_float32``          ``model_float32.tflite``             max |logit diff| <= 1e-4
``tflite_float16``          ``model_float16.tflite``             top-1 agreement 100%
``tflite_dynamic_int8``     ``model_dynamic_int8.tflite``        top-1 agreement >= 95%
``tflite_int8``             ``model_int8.tflite``                top-1 agreement >= 95%
``tflite_<q>_pixels``       ``model_<q>_pixels.tflite``          as ``tflite_<q>``
``onnx``                    ``model.onnx``                       max |logit diff| <= 1e-4
``onnx_dynamic_int8``       ``model_dynamic_int8.onnx``          top-1 agreement >= 95%
``openvino``                ``openvino/`` (``model.xml``, .bin)  max |logit diff| <= 1e-4
``openvino_int8``           ``openvino_int8/``                   top-1 agreement >= 95%
==========================  ===================================  ===========================

Every artifact outputs ``logits`` and ``probabilities`` (the model's own
classifier activation, softmax when it has none). The SavedModel has two
signatures: ``serving_default`` takes float images normalised as the model
expects (``keras_t2t.preprocess_input`` for ImageNet's mean and std);
``serving_uint8`` takes uint8 RGB pixels and normalises inside. The TFLite models take one image (batch 1): float32, or
for the ``_pixels`` models (each of the four quantizations) uint8 RGB pixels,
normalised inside; each carries TFLite metadata (image size, normalisation,
the labels; ``export.metadata``), which MediaPipe's ``ImageClassifier`` reads.
``tflite_int8`` computes its fully connected layers in int8 and the rest in
float32 (``export.quantize``). The SavedModel, the ONNX files and ``openvino``
take any batch; ``openvino_int8`` (NNCF, calibrated like ``tflite_int8``) one
image. ``model.onnx`` is rewritten into ops the runtimes fuse (one
``LayerNormalization`` per layer, ``Gelu``; ``export.onnx``).

The preprocessing travels with the model: the sample and calibration images
are resized, cropped and normalised as the model was evaluated (its preset's,
its training run's, the authors' for a release; ``crop_pct`` overrides the
crop), the uint8 inputs normalise with its mean and std, and ``report.json``'s
``preprocessing`` records what was used and where it came from.

After writing, each artifact runs in its own runtime (LiteRT's interpreter
from ``ai-edge-litert``, ``tf.saved_model.load``, onnxruntime, OpenVINO) on sample
images and is compared with the Keras model: maximum absolute logit
difference, top-1 agreement, latency at batch 1. The table is printed and
saved as ``report.json`` beside the artifacts, with ``labels.txt`` (one class
name per line, class i on line i+1).

Files are written under a hidden temporary name in ``output_dir`` and renamed
onto their final name only once written and verified
(``keras_t2t.io_utils``), so an interrupted or failed export never leaves a
half-written artifact under a final name. Bad input (an unreadable model, an
unknown format, a folder with no images) raises ``ExportError`` before
anything is written.

Export runs on TensorFlow. Called in a JAX or PyTorch process, ``export_model``
saves the model (when given in memory) and hands the options as JSON to a
TensorFlow child process (``keras_t2t.export.child``), which returns the
report as JSON; ``.keras`` files load on any backend.

The rooms: ``formats`` (one record per format: file, writer, runner,
tolerance), ``saved_model`` / ``tflite`` / ``onnx`` / ``openvino`` (the writers and
runtimes), ``serving`` (the interface every artifact shares), ``loading``
(the model to export), ``samples`` (verification and calibration images),
``verify`` and ``report`` (comparison, ``report.json``, the table),
``pipeline`` (``export_model``), ``child`` and ``cli``; ``quantize`` (the
int8 recipe), ``metadata`` (the TFLite metadata) and ``labels`` (the class
names a training run recorded).

Command line: ``python tflite/convert.py`` (or ``python -m keras_t2t.export``),
see ``--help``.
"""

from keras_t2t.backends import load_public_api
from keras_t2t.export.cli import build_parser, main
from keras_t2t.export.errors import ExportError

# The public names that import Keras or TensorFlow, by the module that defines them.
_PUBLIC_MODULES = {
    "keras_t2t.export.formats": ("ARTIFACT_FILES", "FORMATS", "ExportFormat"),
    "keras_t2t.export.loading": ("classifier_for_export", "load_model_for_export", "resolve_for_export"),
    "keras_t2t.export.pipeline": ("export_model",),
    "keras_t2t.export.report": ("ExportReport", "format_table"),
    "keras_t2t.export.saved_model": ("write_saved_model",),
    "keras_t2t.export.tflite": ("convert_tflite", "tflite_operators", "tflite_runner"),
}
__all__ = sorted(["ExportError", "build_parser", "main", *(n for names in _PUBLIC_MODULES.values() for n in names)])

# Now, or in a keras-t2t command (keras-t2t-export, python -m keras_t2t.export) when a name is first used.
load_public_api(globals(), _PUBLIC_MODULES)
