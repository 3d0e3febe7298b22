"""keras_t2t.allocator.keep_freed_memory: freed activations are reused, not refaulted.

The check counts the page faults of a child process that allocates and frees
a batch's worth of 8-28 MB arrays twenty times, with and without the call:
with glibc's defaults every round maps fresh pages; with the call, none.
"""

import os
import platform
import subprocess
import sys

import pytest
from helpers import REPO

from keras_t2t import allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

_CHILD = r"""
import importlib.util, resource, sys
import numpy as np
if sys.argv[1] == "keep":
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.keep_freed_memory()
def round_trip():
    arrays = [np.ones(n, dtype=np.float32) for n in (2_000_000, 7_000_000, 3_000_000, 5_000_000)]
    return sum(float(a[0]) for a in arrays)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode):
    path = os.path.join(REPO, "keras_t2t", "allocator.py")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, path], capture_output=True, text=True, timeout=3600, check=True
    )
    return int(out.stdout.strip())


@glibc_only
def test_freed_memory_is_reused_instead_of_refaulted():
    plain, kept = _page_faults("plain"), _page_faults("keep")
    # 20 rounds x 68 MB would be ~330k faults of 4 KiB pages if nothing were reused.
    assert plain > 5_000, f"glibc's defaults no longer refault here ({plain} faults): revisit the module"
    assert kept < plain / 10, (plain, kept)


@glibc_only
def test_returns_what_it_set():
    # In a child: the call changes the allocator of the whole process.
    code = (
        "from keras_t2t.allocator import keep_freed_memory; "
        "print(keep_freed_memory(8 * 2**20, 2**30) == {'mmap_threshold': 8 * 2**20, 'trim_threshold': 2**30})"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mmap_threshold": 0}, r"mmap_threshold must be an int in 1\.\.33554432 bytes; got 0"),
        ({"mmap_threshold": 64 * 2**20}, r"mmap_threshold must be an int in 1\.\.33554432 bytes; got 67108864"),
        ({"trim_threshold": 2**31}, r"trim_threshold must be an int in 1\.\.2147483647 bytes; got 2147483648"),
        ({"mmap_threshold": True}, r"got True"),
        ({"trim_threshold": "1G"}, r"got '1G'"),
    ],
)
def test_bad_thresholds_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        allocator.keep_freed_memory(**kwargs)
