"""Verification: an artifact runs in its own runtime on the sample images and is compared with Keras."""

import dataclasses
import os
import time

import numpy as np

from keras_t2t.export.serving import UINT8_SIGNATURE


@dataclasses.dataclass(frozen=True)
class Checks:
    """The sample images, the Keras model's logits on them (float64), and the pass criteria's options."""

    samples: np.ndarray
    reference: np.ndarray
    samples_uint8: np.ndarray
    reference_uint8: np.ndarray | None  # None: no uint8 signature to verify
    int8_agreement: float
    latency_runs: int


def latency_ms(run, image, runs):
    """Median milliseconds of ``run(image)`` over ``runs`` timed calls, after one warm-up call."""
    run(image)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _row(artifact, path, tolerance, int8_agreement, **measured):
    row = {
        "artifact": artifact,
        "path": path,
        "size_mb": None,
        "max_abs_diff": None,
        "top1_agreement": None,
        "latency_ms": None,
        "tolerance": tolerance.text(int8_agreement),
        "passed": False,
        "error": None,
    }
    row.update(measured)
    return row


def compare(artifact, path, run, images, reference, tolerance, checks):
    """The report row of ``run`` (batch 1, image by image) against the ``reference`` logits."""
    logits = np.concatenate([run(images[i : i + 1]) for i in range(len(images))])
    diff = float(np.max(np.abs(logits.astype(np.float64) - reference)))
    agreement = float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))
    return _row(
        artifact,
        path,
        tolerance,
        checks.int8_agreement,
        max_abs_diff=diff,
        top1_agreement=agreement,
        latency_ms=latency_ms(run, images[:1], checks.latency_runs),
        passed=tolerance.passes(diff, agreement, checks.int8_agreement),
    )


def failed_row(spec, error, int8_agreement):
    """The row of an artifact that could not be written or run."""
    return _row(spec.name, spec.file, spec.tolerance, int8_agreement, error=error)


def size_mb(path):
    """The size of a file, or of every file in a folder, in MiB."""
    if os.path.isdir(path):
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    else:
        total = os.path.getsize(path)
    return total / 2**20


def verify_artifact(spec, path, checks):
    """The report rows of one written artifact (``spec`` an ``ExportFormat``), run in its own runtime."""
    try:
        rows = [compare(spec.name, spec.file, spec.runner(path), checks.samples, checks.reference, spec.tolerance,
                        checks)]
        if spec.uint8_runner is not None and checks.reference_uint8 is not None:
            rows.append(
                compare(
                    f"{spec.name}:uint8", f"{spec.file} [{UINT8_SIGNATURE}]", spec.uint8_runner(path),
                    checks.samples_uint8, checks.reference_uint8, spec.tolerance, checks,
                )
            )
        if spec.inspect is not None:
            fields, error = spec.inspect(path)
            rows[0].update(fields)
            if error:
                rows[0]["passed"] = False
                rows[0]["error"] = error
    except Exception as error:  # noqa: BLE001 - an artifact that does not run fails its check
        rows = [failed_row(spec, f"does not run in its runtime: {type(error).__name__}: {error}", checks.int8_agreement)]
    size = size_mb(path)
    for row in rows:
        row["size_mb"] = size
    return rows
