"""What machine a benchmark ran on: the CPU (model, logical CPUs, SIMD flags), load, versions,
and its float32 / bfloat16 matmul peak.

Shared by ``benchmarks/run.py`` and ``benchmarks/compare_resnet.py``. The CPU is
read by ``keras_t2t.precision.cpu_info`` (the one ``/proc/cpuinfo`` reader, which
also decides ``--dtype auto``); the matmul peak imports torch when it runs.
"""

import importlib.metadata
import os
import platform
import subprocess
import time

from keras_t2t import precision

# The /proc/cpuinfo flags that decide how fast float32 / bfloat16 / int8 matmuls can be.
SIMD_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)
PACKAGES = ("keras", "tensorflow", "jax", "torch", "ai-edge-litert", "numpy")


def _lscpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_info(path="/proc/cpuinfo"):
    """``{"model", "logical_cpus", "flags", "simd_flags"}`` of this machine's CPU.

    ``keras_t2t.precision.cpu_info`` reads ``path`` (its first processor's
    ``model name`` and ``flags``; ``Features`` on ARM; ``flags`` sorted); where
    the file names no model, ``lscpu`` is asked. ``simd_flags``: those of
    ``SIMD_FLAGS`` the CPU has, in that order.
    """
    info = precision.cpu_info(path)
    model = info["model"]
    if model in (platform.processor(), platform.machine()):  # precision's fallback: the file named no model
        model = _lscpu_model() or model
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "flags": info["flags"],
        "simd_flags": [f for f in SIMD_FLAGS if f in info["flags"]],
    }


def isa_flags_present(path="/proc/cpuinfo"):
    """The flags of ``keras_t2t.precision.ISA_FLAGS`` this CPU has (what decides how fast bfloat16 can be)."""
    return [flag for flag, present in precision.isa_flags(path).items() if present]


def cpu_model():
    """The CPU's model name ("AMD EPYC", ...)."""
    return cpu_info()["model"]


def package_versions(names=PACKAGES):
    """Python's version and each installed package's (None where it is not installed)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average():
    """The 1, 5 and 15 minute load averages, rounded (what else ran on the machine)."""
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------------
# Matmul peak
# --------------------------------------------------------------------------
# Matmul shapes (m, k, n) of the machine peak: square ones and a transformer block's qkv
# projection (32 images x 197 tokens, 384 -> 3 x 384).
PEAK_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (6304, 384, 1152))
QUICK_PEAK_SHAPES = ((1024, 1024, 1024),)


def matmul_peak(shapes=PEAK_SHAPES, repeats=3, min_time_s=0.5, when="start", only=None):
    """Matmul readings: for float32 and bfloat16 (torch; numpy float32 without it) and every
    (m, k, n) of ``shapes`` (or, with ``only`` = {dtype: shape}, that one shape per dtype),
    the GFLOP/s (2 m k n FLOPs) of the fastest of at least ``repeats`` runs (more until
    ``min_time_s`` seconds, at most 50) after one warm-up. Returns (method, readings)."""
    readings = []

    def shapes_of(dtype):
        return [tuple(only[dtype])] if only and dtype in only else shapes

    def measure(dtype, shape, matmul, a, b):
        matmul(a, b)
        times = []
        while len(times) < 50 and (len(times) < repeats or sum(times) < min_time_s):
            times.append(_timed(matmul, a, b))
        m, k, n = shape
        readings.append(
            {"when": when, "dtype": dtype, "shape": list(shape), "runs": len(times), "best_s": min(times),
             "gflops": 2 * m * k * n / min(times) / 1e9}
        )

    try:
        import torch

        method = f"torch {torch.__version__} matmul, {torch.get_num_threads()} threads"
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            for m, k, n in shapes_of(name):
                measure(name, (m, k, n), torch.matmul, torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype))
    except ImportError:
        import numpy as np

        method = f"numpy {np.__version__} matmul (torch missing: no bfloat16)"
        rng = np.random.default_rng(0)
        for m, k, n in shapes_of("float32"):
            a = rng.standard_normal((m, k)).astype("float32")
            b = rng.standard_normal((k, n)).astype("float32")
            measure("float32", (m, k, n), np.matmul, a, b)
    return method, readings


def best_shapes(readings):
    """{dtype: shape} of the fastest reading of each dtype."""
    best = {}
    for r in readings:
        if r["dtype"] not in best or r["gflops"] > best[r["dtype"]][1]:
            best[r["dtype"]] = (tuple(r["shape"]), r["gflops"])
    return {dtype: shape for dtype, (shape, _) in best.items()}


def peak_summary(method, readings, shapes, repeats):
    """The report's ``peak``: every reading, and the highest float32 / bfloat16 one."""
    peak = {"method": method, "shapes": [list(s) for s in shapes], "repeats": repeats, "readings": readings}
    for dtype in ("float32", "bfloat16"):
        values = [r["gflops"] for r in readings if r["dtype"] == dtype]
        peak[f"{dtype}_gflops"] = max(values) if values else None
        for when in ("start", "end"):
            values = [r["gflops"] for r in readings if r["dtype"] == dtype and r["when"] == when]
            peak[f"{dtype}_gflops_{when}"] = max(values) if values else None
    return peak


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
