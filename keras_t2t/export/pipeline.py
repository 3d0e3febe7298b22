"""The export: check everything, build the export in a staging folder, verify each artifact, switch it in.

``export_model`` is the library entry point. The whole export (artifacts,
``labels.txt``, ``report.json``) is built in a staging folder
(``export/staging``) and replaces the previous export in ``output_dir`` as a
whole; an export that fails verification leaves a previous export as it was.
On TensorFlow it runs here; in a JAX or PyTorch process it saves the model
(when given in memory) and hands the options, as JSON, to a TensorFlow child
(``keras_t2t.export.child``), which hands the report back as JSON.

The model comes through ``keras_t2t.resolve`` (``export.loading``), and its
preprocessing with it: the samples, the calibration images, the uint8 inputs and
the TFLite metadata use the crop, mean and std the model was evaluated with (its
preset's, its training run's, the authors'), unless ``crop_pct`` is given.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

from keras_t2t.data.imagenet import imagenet_class_names
from keras_t2t.export.errors import ExportError
from keras_t2t.export.formats import (
    FORMATS,
    ExportSources,
    format_spec,
    parse_formats,
    tolerance_descriptions,
)
from keras_t2t.export.loading import (
    check_model_argument,
    classifier_for_export,
    fit_to_input,
    resolve_for_export,
)
from keras_t2t.export.labels import IMAGENET, read_labels_file, release_tag_names, training_class_names
from keras_t2t.export.report import (
    LABELS_FILE,
    REPORT_FILE,
    ExportReport,
    machine_info,
    versions_info,
)
from keras_t2t.export.samples import (
    calibration_images,
    image_files,
    to_uint8,
    verification_images,
)
from keras_t2t.export.serving import normalize_pixels
from keras_t2t.export.staging import ExportStaging, export_entries
from keras_t2t.export.verify import (
    DEFAULT_DECISIVE_MARGIN,
    Checks,
    failed_row,
    latency_ms,
    verification_rule,
    verify_artifact,
)
from keras_t2t.io_utils import (
    atomic_temp_path,
    check_output_folder,
    install_atomic,
    remove_path,
    write_text_atomic,
)
from keras_t2t.resolve import Preprocessing

DEFAULT_INT8_AGREEMENT = 0.95
DEFAULT_NUM_SAMPLES = 16
DEFAULT_NUM_CALIBRATION = 100
DEFAULT_LATENCY_RUNS = 10
# The TFLite converters read the SavedModel: it is written first when either is asked for.
SAVED_MODEL = "saved_model"
_REFERENCE_BATCH = 8


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
    crop_pct=None,
    int8_agreement=DEFAULT_INT8_AGREEMENT,
    decisive_margin=DEFAULT_DECISIVE_MARGIN,
    labels=None,
    uint8_signature=True,
    latency_runs=DEFAULT_LATENCY_RUNS,
    overwrite=False,
    verbose=True,
):
    """Writes the chosen deployment formats of a classifier into ``output_dir`` and verifies each.

    Args:
        model: a ``keras.Model``, or what ``keras_t2t.resolve.resolve_model``
            reads: a ``.keras`` file (saved on any backend; a training run's
            ``model.keras`` brings the run's preprocessing), a release preset
            name (``"t2t_vit_7_imagenet"``, see ``keras_t2t.list_presets()``), a
            preset folder, or an authors' checkpoint (``.pth``, ``.pth.tar``).
        output_dir: the folder for the artifacts, ``labels.txt`` and ``report.json``.
        variant, weights: instead of ``model``: a model name (``"t2t_vit_7"``...,
            see ``keras_t2t.list_models()``) and a weights tag (``"imagenet"``),
            a ``.weights.h5`` file or an authors' checkpoint; ``image_size``
            (``N`` or ``(height, width)``) and ``classes`` override what the
            weights imply.
        formats: ``"all"`` or a list (or comma-separated string) from ``FORMATS``.
            ``"all"`` without calibration images is every format that needs none
            (``report["skipped"]`` names the others and what enables them).
        representative_dir / representative_tfds: the calibration images of
            the int8 formats that need them (``tflite_int8``, its ``_pixels``
            twin, ``openvino_int8``): a folder (searched recursively) or a TFDS dataset
            ``"NAME[:SPLIT]"`` (read from ``tfds_data_dir``; downloaded only with
            ``tfds_download``). ``num_calibration`` images, evenly spaced.
        sample_dir, num_samples: the images every artifact is compared on
            (default: crops of the photographs bundled with scikit-learn).
        crop_pct: the evaluation resize/crop of those images and of the
            calibration images (spec section 11); default ``None``: the model's
            preprocessing's (its preset's or training run's, the authors' for a
            release, else 0.9). ``report["preprocessing"]`` says which was used
            and where it came from.
        int8_agreement: the top-1 agreement the int8 models must reach (0..1).
        decisive_margin: top-1 is compared up to near-ties: a sample agrees when
            the artifact's top class is one the Keras model scores within this
            many logits of its own top class (``keras_t2t.export.verify``).
        labels: class names (a list or a file, one per line); default the
            ImageNet names for 1000 classes, ``class_<i>`` otherwise.
        uint8_signature: add the SavedModel signature ``serving_uint8``.
        latency_runs: timed runs per artifact (median reported).
        overwrite: replace an export already in ``output_dir``.

    Returns:
        ``ExportReport`` (also written as ``output_dir/report.json`` when
        installed); ``report.passed`` tells whether every artifact is within
        tolerance. The export is built in a staging folder and replaces the
        previous one in ``output_dir`` as a whole (its artifacts that this
        export does not make included). An export that fails does not touch a
        previous export (``report["installed"]`` is False); into a folder
        without one it installs the artifacts that passed and the report. An
        artifact outside tolerance (or whose conversion failed) is never kept.
        Raises ``ExportError`` for bad input, before writing anything.
    """
    options = dict(locals())  # the keyword options, as a TensorFlow child process receives them
    del options["model"], options["output_dir"], options["verbose"]
    return export_with_options(model, output_dir, options, verbose)


def export_with_options(model, output_dir, options, verbose, origin=None):
    """``export_model(model, output_dir, **options, verbose=verbose)``; the TensorFlow child calls it too.

    ``options`` are ``export_model``'s keyword options (those left out take its
    defaults). ``origin`` (``{"source", "preprocessing"}``, from ``origin_of``)
    describes a model given in memory to another process, which received it as a
    temporary ``.keras`` file.
    """
    options = _with_defaults(options)
    if output_dir is None:
        raise ExportError("output_dir is required.")
    variant, weights = options.get("variant"), options.get("weights")
    # === every check before anything is written (and before another process is started) ===
    check_model_argument(model, variant, weights, options.get("image_size"), options.get("classes"))
    plan = _plan(os.fspath(output_dir), **options)
    plan["trained_labels"] = training_class_names(model) if variant is None else release_tag_names(weights)
    resolved = resolve_for_export(model, variant=variant, weights=weights, image_size=options.get("image_size"),
                                  classes=options.get("classes"))
    model_source, preprocessing = resolved.description, resolved.preprocessing
    if origin is not None:
        model_source, preprocessing = origin["source"], preprocessing_from_json(origin["preprocessing"])
    classifier = classifier_for_export(resolved.model)
    resolve_labels(options.get("labels"), int(classifier.outputs[0].shape[-1]), plan["trained_labels"])
    if keras.backend.backend() != "tensorflow":
        in_memory = origin_of(model_source, preprocessing) if isinstance(model, keras.Model) else None
        return export_in_tensorflow_process(model, output_dir, options, verbose, in_memory)
    plan["preprocessing"] = fit_to_input(preprocessing.with_overrides(crop_pct=options.get("crop_pct")), classifier)
    return _export(resolved.model, classifier, plan, model_source=model_source, verbose=verbose)


def _with_defaults(options):
    """``options`` completed with ``export_model``'s defaults; TypeError naming an option it does not take."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(export_model).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "verbose"
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"export_model() got unexpected keyword arguments: {', '.join(unknown)}")
    return {**defaults, **options}


def origin_of(model_source, preprocessing):
    """The JSON form of where a model given in memory came from, for ``export_with_options(origin=...)``."""
    fields = dataclasses.asdict(preprocessing)
    return {"source": model_source, "preprocessing": {key: _as_json(value) for key, value in fields.items()}}


def preprocessing_from_json(fields):
    """The ``Preprocessing`` of its JSON form (``origin_of``, ``report["preprocessing"]``)."""
    return Preprocessing(
        image_size=tuple(int(v) for v in fields["image_size"]), crop_pct=float(fields["crop_pct"]),
        mean=tuple(float(v) for v in fields["mean"]), std=tuple(float(v) for v in fields["std"]),
        source=str(fields["source"]),
    )


# --------------------------------------------------------------------------
# Planning: the checks that need no model
# --------------------------------------------------------------------------
def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExportError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _skip_uncalibrated(formats, requested, calibrated):
    """``(formats, skipped)``: with ``"all"`` and no calibration images, the calibrated formats are skipped."""
    if not calibrated or requested not in (None, "all"):
        return formats, []
    skipped = [
        {
            "artifact": name,
            "reason": "calibrated on representative images, and none were given",
            "enable_with": "--representative-dir DIR or --representative-tfds NAME[:SPLIT] "
                           "(representative_dir= / representative_tfds=)",
        }
        for name in calibrated
    ]
    return [f for f in formats if f not in calibrated], skipped


def _plan(output_dir, *, formats, representative_dir, representative_tfds, num_calibration, sample_dir, num_samples,
          crop_pct, int8_agreement, decisive_margin, latency_runs, overwrite, **options):
    """The checked options, the image files found, and the output folder's state; raises ExportError."""
    try:
        check_output_folder(output_dir, "output_dir (--output-dir)")
    except ValueError as error:
        raise ExportError(str(error)) from None
    requested, formats = formats, parse_formats(formats)
    num_calibration = _positive_int("num_calibration", num_calibration)
    num_samples = _positive_int("num_samples", num_samples)
    latency_runs = _positive_int("latency_runs", latency_runs)
    if not 0.0 <= float(int8_agreement) <= 1.0:
        raise ExportError(f"int8_agreement is a fraction in [0, 1]; got {int8_agreement!r}.")
    if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.number))
                                 or not 0.0 < float(crop_pct) <= 1.0):
        raise ExportError(f"crop_pct must be in (0, 1] (or None: the model's preprocessing's); got {crop_pct!r}.")
    if isinstance(decisive_margin, bool) or not isinstance(decisive_margin, (int, float, np.number)) or not (
        0.0 <= decisive_margin < float("inf")
    ):
        raise ExportError(f"decisive_margin is a number of logits >= 0, such as 0.1; got {decisive_margin!r}.")
    calibrated = [f for f in formats if format_spec(f).needs_calibration]
    skipped = []
    if not (representative_dir or representative_tfds):
        formats, skipped = _skip_uncalibrated(formats, requested, calibrated)
        calibrated = [f for f in formats if format_spec(f).needs_calibration]
    if calibrated and not (representative_dir or representative_tfds):
        names = " and ".join(calibrated)
        raise ExportError(
            f"{names} {'is' if len(calibrated) == 1 else 'are'} calibrated on a representative set: give "
            "representative_dir (--representative-dir DIR) or representative_tfds (--representative-tfds "
            f"NAME[:SPLIT]), or leave {names} out of the formats."
        )
    if representative_dir and representative_tfds:
        raise ExportError("Give one representative set: a folder or a TFDS dataset, not both.")
    # A new export replaces the previous one as a whole: any of its entries needs overwrite.
    existing = export_entries(output_dir)
    if existing and not overwrite:
        raise ExportError(
            f"{output_dir!r} already holds {', '.join(existing)}; pass overwrite=True (--overwrite) to replace "
            "that export as a whole."
        )
    return dict(
        options,
        output_dir=output_dir,
        formats=formats,
        skipped=skipped,
        decisive_margin=float(decisive_margin),
        representative_dir=representative_dir,
        representative_tfds=representative_tfds,
        representative_files=(
            image_files(representative_dir, "representative") if calibrated and representative_dir else None
        ),
        num_calibration=num_calibration,
        sample_dir=sample_dir,
        sample_files=image_files(sample_dir, "sample") if sample_dir else None,
        num_samples=num_samples,
        crop_pct=None if crop_pct is None else float(crop_pct),
        int8_agreement=float(int8_agreement),
        latency_runs=latency_runs,
        overwrite=overwrite,
    )


def resolve_labels(labels, classes, trained=None):
    """``(class names, where they came from)`` for a model with ``classes`` classes; ExportError if they do not fit.

    Without ``labels``: ``trained`` (the class names its training run recorded, or an ImageNet
    release's, from ``export.labels``) when they fit, else ``class_<i>``, the source saying why
    (a recorded list of another length, an unreadable ``summary.json``, a 1000-class model with no
    names: ``labels="imagenet"`` asks for ImageNet-1k's). ``labels``: a list, a file (one per
    line, UTF-8) or ``"imagenet"``.
    """
    if labels is None:
        if trained is not None and trained[0] is not None and len(trained[0]) == classes:
            return trained
        why = "no class names recorded"
        if trained is not None and trained[0] is None:
            why = f"the recorded class names cannot be used: {trained[1]}"
        elif trained is not None:
            why = f"{trained[1]} records {len(trained[0])} class names, the model has {classes} classes"
        hint = ("; pass --labels imagenet if it was trained on ImageNet-1k, or --labels FILE" if classes == 1000
                else "; pass --labels FILE (one name per line)")
        return [f"class_{i}" for i in range(classes)], f"generic class_<i> ({why}{hint})"
    source = "list"
    if isinstance(labels, str) and labels.lower() == IMAGENET and not os.path.exists(labels):
        labels, source = list(imagenet_class_names()), "imagenet (--labels imagenet)"
    elif isinstance(labels, (str, os.PathLike)):
        source = os.fspath(labels)
        labels = read_labels_file(labels)
    labels = [str(label) for label in labels]
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels were given for a model with {classes} classes.")
    if any("\n" in label for label in labels):
        raise ExportError("A label contains a line break; labels.txt holds one label per line.")
    return labels, source


# --------------------------------------------------------------------------
# Write, verify, install (TensorFlow backend)
# --------------------------------------------------------------------------
def _checks(classifier, samples, plan):
    """What every artifact is compared with: the Keras model's logits, and its latency at batch 1.

    The uint8 inputs are fed the pixels the samples came from, normalised with the model's mean and std.
    """
    mean, std = plan["preprocessing"].mean, plan["preprocessing"].std

    def keras_run(images):
        return np.asarray(classifier.predict_on_batch(images)["logits"], np.float32)

    def logits(images):
        batches = [keras_run(images[i : i + _REFERENCE_BATCH]) for i in range(0, len(images), _REFERENCE_BATCH)]
        return np.concatenate(batches).astype(np.float64)

    samples_uint8 = to_uint8(samples, mean, std)
    reference_uint8 = None
    if plan["uint8_signature"] and any(format_spec(f).uint8_runner for f in plan["formats"]):
        reference_uint8 = logits(normalize_pixels(samples_uint8, mean, std))
    checks = Checks(
        samples=samples,
        reference=logits(samples),
        samples_uint8=samples_uint8,
        reference_uint8=reference_uint8,
        int8_agreement=plan["int8_agreement"],
        latency_runs=plan["latency_runs"],
        decisive_margin=plan["decisive_margin"],
    )
    return checks, {"latency_ms": latency_ms(keras_run, samples[:1], plan["latency_runs"])}


def _new_temp(output_dir, spec, temps):
    """A temporary path for ``spec``'s artifact (free for the writer to create, for a folder)."""
    temp = atomic_temp_path(output_dir, spec.file, is_directory=spec.is_directory)
    temps.append(temp)
    if spec.is_directory:
        os.rmdir(temp)  # writers (the SavedModel's) make the folder themselves
    return temp


def _write_verify_install(sources, checks, formats, staging_dir, temps, say):
    """The report rows; each artifact that passes is renamed onto its final name in the staging folder."""
    saved_model_temp, saved_model_seconds = sources.saved_model_dir, None
    if saved_model_temp is not None:
        start = time.perf_counter()
        format_spec(SAVED_MODEL).write(saved_model_temp, sources)
        saved_model_seconds = time.perf_counter() - start
    rows = []
    # The SavedModel goes last: the TFLite converters read it from its temporary folder.
    for fmt in sorted(formats, key=lambda f: f == SAVED_MODEL):
        spec = format_spec(fmt)
        say(f"  {fmt}: writing...", flush=True)
        start = time.perf_counter()
        temp = saved_model_temp if fmt == SAVED_MODEL else _new_temp(staging_dir, spec, temps)
        try:
            if fmt != SAVED_MODEL:
                spec.write(temp, sources)
        except Exception as error:  # noqa: BLE001 - recorded in the report; the other formats go on
            fmt_rows = [failed_row(spec, f"conversion failed: {type(error).__name__}: {error}", checks.int8_agreement)]
        else:
            seconds = saved_model_seconds if fmt == SAVED_MODEL else time.perf_counter() - start
            fmt_rows = verify_artifact(spec, temp, checks)
            for row in fmt_rows:
                row["convert_seconds"] = seconds
        rows.extend(fmt_rows)
        passed = all(row["passed"] for row in fmt_rows)
        if passed:
            install_atomic(temp, os.path.join(staging_dir, spec.file))
            temps.remove(temp)
        say(f"  {fmt}: {'ok' if passed else 'FAILED'} ({time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def _export(source, classifier, plan, model_source, verbose):
    say = print if verbose else (lambda *a, **k: None)
    output_dir, formats, preprocessing = plan["output_dir"], plan["formats"], plan["preprocessing"]
    crop_pct, mean, std = preprocessing.crop_pct, preprocessing.mean, preprocessing.std
    height, width, _ = (int(v) for v in classifier.inputs[0].shape[1:])
    num_classes = int(classifier.outputs[0].shape[-1])
    label_list, label_source = resolve_labels(plan["labels"], num_classes, plan["trained_labels"])

    samples, sample_source = verification_images(
        plan["sample_files"], plan["sample_dir"], plan["num_samples"], (height, width), crop_pct, mean, std
    )
    representative, representative_source = None, None
    if any(format_spec(f).needs_calibration for f in formats):
        representative, representative_source = calibration_images(
            plan["representative_files"], plan["representative_dir"], plan["representative_tfds"],
            plan["num_calibration"], (height, width), crop_pct, plan["tfds_data_dir"], plan["tfds_download"],
            mean, std,
        )
    checks, reference_info = _checks(classifier, samples, plan)

    temps = []
    staging = ExportStaging(output_dir)  # removes what killed exports left here first
    try:
        say(f"keras_t2t.export: {classifier.name} ({height}x{width}, {num_classes} classes) -> {output_dir}")
        say(f"  model: {model_source}")
        say(f"  {preprocessing.describe()}")
        say(f"  labels: {label_source}", flush=True)
        saved_model_dir = None
        if any(f == SAVED_MODEL or format_spec(f).reads_saved_model for f in formats):
            saved_model_dir = _new_temp(staging.path, format_spec(SAVED_MODEL), temps)
        sources = ExportSources(classifier, saved_model_dir, representative, plan["uint8_signature"],
                                tuple(label_list), tuple(mean), tuple(std))
        rows = _write_verify_install(sources, checks, formats, staging.path, temps, say)
        for temp in temps:  # the SavedModel the converters read, when not itself exported; failed artifacts
            remove_path(temp)
        rows.sort(key=lambda row: FORMATS.index(format_spec(row["artifact"]).name))
        passed = all(row["passed"] for row in rows)
        report = ExportReport(
            created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            passed=passed,
            # A failed export does not replace an earlier one; into a folder without one it goes in as it is.
            installed=passed or not staging.previous,
            model={
                "name": classifier.name,
                "source": model_source,
                "input_shape": [height, width, 3],
                "classes": num_classes,
                "parameters": int(sum(int(np.prod(v.shape)) for v in source.weights)),
            },
            preprocessing={
                "image_size": [int(v) for v in preprocessing.image_size],
                "crop_pct": float(crop_pct),
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
                "source": preprocessing.source,
            },
            samples={"source": sample_source, "count": len(samples), "crop_pct": float(crop_pct),
                     "preprocessing_source": preprocessing.source},
            representative=None
            if representative is None
            else {"source": representative_source, "count": len(representative)},
            labels={"file": LABELS_FILE, "source": label_source},
            tolerances=tolerance_descriptions(plan["int8_agreement"]),
            verification=verification_rule(checks),
            reference=reference_info,
            artifacts=rows,
            skipped=plan["skipped"],
            machine=machine_info(),
            versions=versions_info(),
        )
        if report["installed"]:
            write_text_atomic(os.path.join(staging.path, LABELS_FILE), "\n".join(label_list) + "\n")
            write_text_atomic(os.path.join(staging.path, REPORT_FILE), json.dumps(report, indent=2) + "\n")
            staging.commit()
        else:
            staging.discard()
    except BaseException:
        staging.discard()
        raise
    say(report.table())
    if report["installed"]:
        verdict = "all artifacts verified" if report.passed else "VERIFICATION FAILED"
        say(f"{verdict}; report: {os.path.join(output_dir, REPORT_FILE)}")
    else:
        say(f"VERIFICATION FAILED; the earlier export in {output_dir} was left as it was (this report is not saved)")
    return report


# --------------------------------------------------------------------------
# Another backend: the export runs in a TensorFlow process
# --------------------------------------------------------------------------
def _as_json(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    return value


def export_in_tensorflow_process(model, output_dir, options, verbose, origin=None):
    """Runs ``export_model(model, output_dir, **options)`` in a TensorFlow child process; its report.

    ``model`` is a ``keras.Model`` (saved to a temporary ``.keras`` file first:
    the file holds no backend code; ``origin``, from ``origin_of``, then says what
    it is and its preprocessing) or a handle ``keras_t2t.resolve`` reads, which
    the child resolves again (its preprocessing with it). The child
    (``python -m keras_t2t.export.child REQUEST``) reads the model, the options
    and the origin from the JSON file ``REQUEST`` and writes the report, or the
    ``ExportError`` message, to the JSON file the request names.
    """
    with tempfile.TemporaryDirectory(prefix="keras_t2t_export_") as scratch:
        if isinstance(model, keras.Model):
            path = os.path.join(scratch, f"{model.name}.keras")
            model.save(path)
            model = path
        options = dict(options)
        if options.get("labels") is not None and not isinstance(options["labels"], (str, os.PathLike)):
            options["labels"] = [str(label) for label in options["labels"]]
        request = {
            "model": _as_json(model),
            "output_dir": os.fspath(output_dir),
            "options": {key: _as_json(value) for key, value in options.items()},
            "verbose": bool(verbose),
            "origin": origin,
            "result": os.path.join(scratch, "result.json"),
        }
        request_path = os.path.join(scratch, "request.json")
        with open(request_path, "w", encoding="utf-8") as handle:
            json.dump(request, handle)
        returncode, errors = _run_tensorflow_child(request_path, scratch, verbose)
        result = {}
        if os.path.isfile(request["result"]):
            with open(request["result"], encoding="utf-8") as handle:
                result = json.load(handle)
    if returncode == 0 and "error" in result:
        raise ExportError(result["error"])
    if returncode == 0 and "report" in result:
        return ExportReport(result["report"])
    raise RuntimeError(f"The TensorFlow export process failed (exit code {returncode}):\n{errors[-4000:]}")


def _run_tensorflow_child(request_path, scratch, verbose):
    """``(exit code, stderr)`` of the child; its printed progress passes through when ``verbose``."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with open(os.path.join(scratch, "stderr.txt"), "w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_t2t.export.child", request_path],
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
        return returncode, stderr.read()
