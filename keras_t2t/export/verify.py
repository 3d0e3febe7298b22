"""Verification: an artifact runs in its own runtime on the sample images and is compared with Keras.

Top-1 is compared up to near-ties (``top1_agreement``): a sample agrees when
the artifact's top class is the reference's, or a class the reference scores
within ``decisive_margin`` logits of its top one. On a *decisive* sample (the
reference's top class leads the runner-up by more than the margin) that is
exact agreement; on a near-tie, where rounding may legitimately swap the top
two, either of the tied classes is right. So the outcome cannot flip on a
near-tie, and an artifact that picks a class the reference rates far below its
top one still fails. The strict agreement on all samples is reported too.
"""

import dataclasses
import os
import time

import numpy as np

from keras_t2t.export.serving import UINT8_SIGNATURE

#: Logits by which the reference's top class must lead for a sample to be decisive: a top class
#: at least e**0.1 = 1.105 times as probable as the runner-up under softmax.
DEFAULT_DECISIVE_MARGIN = 0.1


@dataclasses.dataclass(frozen=True)
class Checks:
    """The sample images, the Keras model's logits on them (float64), and the pass criteria's options
    (``decisive_margin``: see the module). ``samples_uint8`` are the pixels the samples came from
    (what the uint8 signatures and the pixel-input artifacts are fed); ``reference_uint8`` the Keras
    model's logits on them, normalised as the model's preprocessing says."""

    samples: np.ndarray
    reference: np.ndarray
    samples_uint8: np.ndarray
    reference_uint8: np.ndarray | None  # None: no uint8 signature to verify
    int8_agreement: float
    latency_runs: int
    decisive_margin: float = DEFAULT_DECISIVE_MARGIN


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
        "top1_agreement_strict": None,
        "decisive_samples": None,
        "latency_ms": None,
        "tolerance": tolerance.text(int8_agreement),
        "passed": False,
        "error": None,
    }
    row.update(measured)
    return row


def decisive(reference, margin):
    """Per sample: does the reference's top class lead every other class by more than ``margin`` logits?"""
    reference = np.asarray(reference, np.float64)
    if reference.shape[1] < 2:
        return np.ones(len(reference), bool)
    top_two = np.sort(reference, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] > margin  # False where the reference is NaN


def top1_agreement(logits, reference, margin):
    """``(agreement up to near-ties, strict agreement, decisive samples)`` of ``logits`` against ``reference``.

    A sample agrees up to near-ties when the reference scores the artifact's top
    class within ``margin`` of its own top score (see the module).
    """
    reference = np.asarray(reference, np.float64)
    chosen = np.argmax(logits, axis=1)
    best = np.max(reference, axis=1)
    near = reference[np.arange(len(reference)), chosen] >= best - margin
    strict = chosen == np.argmax(reference, axis=1)
    return float(np.mean(near)), float(np.mean(strict)), int(np.sum(decisive(reference, margin)))


def verification_rule(checks):
    """``report.json``'s ``verification``: how top-1 is compared, and how many samples were decisive."""
    margin = checks.decisive_margin
    return {
        "top1_rule": (
            "top-1 agreement up to near-ties: a sample agrees when the artifact's top class is one the Keras "
            f"model scores within {margin:g} logits of its own top class; on decisive samples (top class ahead "
            f"of the runner-up by more than {margin:g}) only the same class agrees"
        ),
        "decisive_margin": margin,
        "samples": len(checks.reference),
        "decisive_samples": int(np.sum(decisive(checks.reference, margin))),
        "logit_rule": "max |logit diff| over every sample and class (float formats)",
    }


def compare(artifact, path, run, images, reference, tolerance, checks):
    """The report row of ``run`` (batch 1, image by image) against the ``reference`` logits."""
    logits = np.concatenate([run(images[i : i + 1]) for i in range(len(images))])
    diff = float(np.max(np.abs(logits.astype(np.float64) - reference)))
    agreement, strict, decisive_count = top1_agreement(logits, reference, checks.decisive_margin)
    return _row(
        artifact,
        path,
        tolerance,
        checks.int8_agreement,
        max_abs_diff=diff,
        top1_agreement=agreement,
        top1_agreement_strict=strict,
        decisive_samples=decisive_count,
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
        # A pixel-input artifact is fed the pixels the samples came from, and compared with the Keras
        # model's logits on the samples themselves (``to_uint8`` is exact for 8-bit pictures).
        inputs = checks.samples_uint8 if spec.takes_pixels else checks.samples
        rows = [compare(spec.name, spec.file, spec.runner(path), inputs, checks.reference, spec.tolerance, checks)]
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
