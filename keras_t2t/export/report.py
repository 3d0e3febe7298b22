"""The export report: ``report.json``'s content, its printed table, and the machine it was measured on."""

import contextlib
import math
import os
import platform
from importlib import metadata

LABELS_FILE = "labels.txt"
REPORT_FILE = "report.json"


class ExportReport(dict):
    """What an export wrote and how each artifact compared with the Keras model.

    A dict (the content of ``report.json``) with ``passed`` (all artifacts
    within tolerance), ``installed`` (whether this export is the one in the
    output folder: a failed export leaves an earlier one as it was),
    ``artifacts`` (one row each: ``artifact``, ``path``, ``size_mb``,
    ``max_abs_diff``, ``top1_agreement`` (up to near-ties),
    ``top1_agreement_strict``, ``decisive_samples``, ``latency_ms``,
    ``tolerance``, ``passed``, ``error``), ``skipped`` (formats left out, with
    the option that adds them), ``verification`` (the top-1 rule and how many
    samples were decisive), ``preprocessing`` (the ``image_size``, ``crop_pct``,
    ``mean`` and ``std`` the model is fed with, and their ``source``: its
    preset, its training run, a flag, the defaults), and what was compared on.
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

    @property
    def installed(self):
        return bool(self.get("installed", True))

    def table(self):
        return format_table(
            self.get("reference"), self.get("artifacts", []), self.get("verification"), self.get("skipped", ())
        )

    def __str__(self):
        return self.table()


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)


def format_table(reference, rows, verification=None, skipped=()):
    """The printed table: artifact, size MB, max diff, top-1 agreement, latency ms at batch 1, result.

    Below it: each row's error, the top-1 rule and the decisive samples (``verification``), and the
    formats ``skipped``.
    """
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
    if verification:
        out.append(
            f"top-1 agree: up to near-ties (a class within {verification['decisive_margin']:g} logits of the Keras "
            f"model's top one counts); {verification['decisive_samples']} of {verification['samples']} samples "
            "decisive, where only the same class counts"
        )
        strict = [
            f"{row['artifact']} {100 * row['top1_agreement_strict']:.1f}%"
            for row in rows
            if row.get("top1_agreement_strict") is not None and row["top1_agreement_strict"] != row["top1_agreement"]
        ]
        if strict:
            out.append("strict top-1 agreement (near-ties included): " + ", ".join(strict))
    for entry in skipped:
        out.append(f"{entry['artifact']}: skipped ({entry['reason']}); add it with {entry['enable_with']}")
    return "\n".join(out)


def machine_info():
    """``{"cpu": model name, "cpu_count": n}`` of this machine, for the latencies."""
    name = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"cpu": name or platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def versions_info():
    """The versions of the converters and runtimes installed (those that are)."""
    out = {}
    for package in ("keras", "tensorflow", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "openvino", "nncf", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out
