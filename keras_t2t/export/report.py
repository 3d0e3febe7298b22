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
    for package in ("keras", "tensorflow", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out
