"""Keeping freed memory in the process (glibc ``mallopt``), for eager CPU backends.

PyTorch on the CPU allocates every activation with the C library's ``malloc``.
With glibc's defaults, blocks above a (dynamic) size are ``mmap``-ed and freed
memory at the top of the heap is handed back to the kernel, so each forward
pass of a T2T-ViT at batch 32 touches tens of MB of fresh pages, and every
fresh page costs a page fault and zeroing. ``keep_freed_memory()`` raises both
thresholds so freed activations are reused by the next batch instead: on this
project's 2-core machine it made T2T-ViT-14 inference at batch 32 on torch
about 12% faster and training about 7% faster (``benchmarks/README.md``);
TensorFlow and JAX, which manage their own buffers, did not change.

It is opt-in: it changes the allocator of the whole process (the memory it
keeps is not returned to the system until exit). The same can be had without
code by setting ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the
environment before Python starts. Linux with glibc only.
"""

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 * 2**20
# mallopt takes a C int: the largest trim threshold it can set is 2 GiB - 1.
MAX_TRIM_THRESHOLD = 2**31 - 1


def _glibc():
    if platform.system() != "Linux":
        raise RuntimeError(f"keep_freed_memory needs Linux with glibc; this is {platform.system()}.")
    libc_name, version = platform.libc_ver()
    if libc_name != "glibc":
        raise RuntimeError(f"keep_freed_memory needs glibc; this Python runs on {libc_name or 'an unknown C library'}.")
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD, trim_threshold=MAX_TRIM_THRESHOLD):
    """Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process.

    Args:
        mmap_threshold: allocations of at least this many bytes get their own
            ``mmap`` (and are unmapped when freed); at most 32 MiB (glibc's limit).
        trim_threshold: free memory at the top of the heap above this many bytes
            is returned to the kernel; at most 2 GiB - 1 (mallopt takes an int).

    Returns ``{"mmap_threshold": ..., "trim_threshold": ...}`` as set. Raises
    ``ValueError`` for a value glibc does not accept and ``RuntimeError``
    where there is no glibc.
    """
    for name, value, limit in (
        ("mmap_threshold", mmap_threshold, MAX_MMAP_THRESHOLD),
        ("trim_threshold", trim_threshold, MAX_TRIM_THRESHOLD),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise ValueError(f"{name} must be an int in 1..{limit} bytes; got {value!r}.")
    libc = _glibc()
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    if not libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        raise ValueError(f"glibc refused mmap_threshold={mmap_threshold}.")
    if not libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        raise ValueError(f"glibc refused trim_threshold={trim_threshold}.")
    return {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold}
