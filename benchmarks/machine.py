"""What machine a benchmark ran on: the CPU (model, logical CPUs, SIMD flags), load and versions.

Shared by ``benchmarks/run.py`` and ``benchmarks/compare_resnet.py``. Imports no
framework: ``run.py``'s parent process must not import Keras.
"""

import importlib.metadata
import os
import platform
import subprocess

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

    From ``/proc/cpuinfo`` (its first processor's ``model name`` and ``flags``;
    ``Features`` on ARM), else ``lscpu`` / ``platform.processor()`` for the model
    and no flags. ``simd_flags``: those of ``SIMD_FLAGS`` the CPU has.
    """
    fields = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    if fields:  # the blank line after the first processor
                        break
                    continue
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    model = fields.get("model name") or _lscpu_model() or platform.processor() or "unknown"
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "flags": flags,
        "simd_flags": [f for f in SIMD_FLAGS if f in flags],
    }


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
