"""Checkpoint bombs the declared-size limits alone let through (issue 23): aliasing, stride 0, lying zip headers.

The reader's limit once counted the storages a file declares, not the arrays it builds from
them, and inflated zip records through ``zipfile``, which trusts a record's header. Three small
files turned into gigabytes: forty tensors viewing one deflated 64 MiB storage (2,560 MiB of
arrays), one bfloat16 element expanded with stride 0 to 20000x20000 (1.6 GB as float32, ~4 GB at
the peak), and a record declaring 1,024 bytes whose deflate stream inflates to 1 GiB. The
promise now, checked below with ``tracemalloc`` (numpy's buffers are traced too):

- the arrays the reader will hand out (every tensor as built: a view counts in full, a stride-0
  tensor at its expanded size, bfloat16 as float32) are counted before any record is inflated,
  against ``max_bytes``; no one tensor holds more elements than the largest model has weights;
- every record inflates through a decompressor capped at the size its header declares (which
  must be what the pickle declares of it), and a stream giving more or less is refused;
- so reading holds at most the inflated storages plus the arrays, each at most ``max_bytes``:
  a peak of about twice the limit, whatever the file claims.
"""

import collections
import io
import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_t2t.cli import convert as convert_cli  # noqa: E402
from keras_t2t.cli import weights as weights_cli  # noqa: E402
from keras_t2t.weights import pretrained  # noqa: E402
from keras_t2t.weights.torch_pickle import (  # noqa: E402
    LARGEST_MODEL_WEIGHTS,
    MAX_CHECKPOINT_BYTES,
    CheckpointError,
    read_checkpoint,
)

MIB = 1 << 20
# What reading a refused bomb may allocate at most (the pickle, the zip directory, one inflated chunk).
SMALL = 16 * MIB
# What the reader may allocate beyond its storages and its arrays (Python objects, one inflated chunk).
SLACK = 3 * MIB


# -- writing hostile files ------------------------------------------------------


def deflated_zeros(nbytes):
    """A raw deflate stream of ``nbytes`` zeros (a multiple of 1 MiB), built from one compressed MiB (~1 KB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return one * (nbytes // MIB) + compressor.flush(zlib.Z_FINISH)


def deflated(data):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def write_zip(path, records):
    """A zip archive by hand, ``records`` {name: bytes} stored or {name: (stream, declared size, crc, method)}."""
    body, directory = bytearray(), bytearray()
    for name, record in records.items():
        data, size, crc, method = (record, len(record), zlib.crc32(record), 0) if isinstance(record, bytes) else record
        name = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(data), size)
        directory += b"PK\x01\x02" + struct.pack("<H", 20) + fields
        directory += struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, len(body)) + name
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name + data
    end = struct.pack("<HHHHIIH", 0, 0, len(records), len(records), len(directory), len(body), 0)
    path.write_bytes(bytes(body) + bytes(directory) + b"PK\x05\x06" + end)
    return path


def records_of(path):
    """{name: bytes} of a torch.save zip file."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def storage_record(records, key="0"):
    return next(name for name in records if name.endswith(f"/data/{key}"))


class Storage:
    """A storage as torch.save references it: ``("storage", type, key, "cpu", numel)``."""

    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, getattr(torch, kind)


class Tensor:
    """Pickles as torch's tensors do (``_rebuild_tensor_v2``), with any size, stride and offset."""

    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", obj.kind, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None


def hand_checkpoint(path, tensors, storages):
    """A zip checkpoint of ``tensors`` ({name: Tensor}) over ``storages`` ({key: record}), written by hand."""
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(tensors)
    return write_zip(path, {"archive/data.pkl": buffer.getvalue(), "archive/byteorder": b"little",
                            **{f"archive/data/{key}": record for key, record in storages.items()}})


# -- measuring --------------------------------------------------------------------


def traced(call, *args, **kwargs):
    """``(result, peak bytes Python and numpy allocated during the call, seconds)``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = call(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


def refused(path, **kwargs):
    """read_checkpoint's refusal of ``path`` and the peak allocated while refusing it."""

    def read():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path, **kwargs)
        return str(error.value)

    message, peak, seconds = traced(read)
    assert str(path) in message
    assert seconds < 10, f"refusing {path.name} took {seconds:.1f} s"
    return message, peak


# -- the issue's three files --------------------------------------------------------


@pytest.fixture(scope="module")
def issue_files(tmp_path_factory):
    """The issue's files, made with torch.save (then a record deflated or replaced), by name."""
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    # Forty tensors viewing one 64 MiB storage of zeros, deflated: a ~70 KB file, 2,560 MiB of arrays.
    zeros = torch.zeros(4096, 4096)
    torch.save({f"blocks.{i}.weight": zeros.view(4096, 4096) for i in range(40)}, folder / "plain.pth")
    records = records_of(folder / "plain.pth")
    (folder / "plain.pth").unlink()
    name = storage_record(records)
    records[name] = (deflated_zeros(64 * MIB), 64 * MIB, zlib.crc32(records[name]), 8)
    files["aliasing"] = write_zip(folder / "aliasing.pth", records)
    # One bfloat16 element expanded with stride 0 to 20000x20000: a ~1.5 KB file, 1.6 GB as float32.
    torch.save({"weight": torch.zeros(1, dtype=torch.bfloat16).expand(20000, 20000)}, folder / "stride0.pth")
    files["stride0"] = folder / "stride0.pth"
    # A record declaring the 1,024 bytes its storage holds, whose deflate stream inflates to 1 GiB.
    torch.save({"weight": torch.zeros(256)}, folder / "small.pth")
    records = records_of(folder / "small.pth")
    name = storage_record(records)
    records[name] = (deflated_zeros(1 << 30), 1024, zlib.crc32(bytes(1024)), 8)
    files["lying_header"] = write_zip(folder / "lying_header.pth", records)
    return files


# What the reader says of each (the commands pass it on).
REASONS = {
    "aliasing": f"would become {40 * 64 * MIB:,} bytes of arrays",
    "stride0": "tensor 'weight' would be an array of 400,000,000 elements",
    "lying_header": "inflates to more than the 1,024 bytes its zip header declares",
}


def test_the_issues_files_are_as_small_as_the_issue_says(issue_files):
    sizes = {kind: path.stat().st_size for kind, path in issue_files.items()}
    assert sizes["aliasing"] < 100_000 and sizes["stride0"] < 2_000
    assert 1_000_000 < sizes["lying_header"] < 1_100_000


def test_forty_views_of_one_deflated_64_mib_storage_are_refused_before_anything_is_inflated(issue_files):
    message, peak = refused(issue_files["aliasing"])
    # Counted as built: 40 arrays of 64 MiB, though the file declares one storage of 64 MiB.
    assert "'blocks." in message and f"{40 * 64 * MIB:,} bytes of arrays" in message, message
    assert f"{MAX_CHECKPOINT_BYTES:,}" in message and "max_bytes=" in message
    assert peak < SMALL, peak


def test_a_bfloat16_element_expanded_to_20000x20000_is_refused_before_anything_is_inflated(issue_files):
    message, peak = refused(issue_files["stride0"])
    assert "tensor 'weight'" in message and "400,000,000 elements" in message, message
    assert f"{LARGEST_MODEL_WEIGHTS:,}" in message
    assert peak < SMALL, peak


def test_a_record_declaring_1_kib_that_inflates_to_1_gib_is_refused_after_1_kib(issue_files):
    message, peak = refused(issue_files["lying_header"])
    assert "inflates to more than the 1,024 bytes its zip header declares" in message, message
    assert peak < SMALL, peak


@pytest.mark.parametrize("kind", ["aliasing", "stride0", "lying_header"])
def test_keras_t2t_convert_refuses_them_in_one_line_without_the_memory(issue_files, tmp_path, capsys, kind):
    output = tmp_path / "m.keras"
    code, peak, _ = traced(convert_cli.main, [str(issue_files[kind]), "--output", str(output)])
    errors = capsys.readouterr().err.splitlines()
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
    assert str(issue_files[kind]) in errors[0] and REASONS[kind] in errors[0], errors[0]
    assert not output.exists()
    assert peak < SMALL, peak


@pytest.mark.parametrize("kind", ["aliasing", "stride0", "lying_header"])
def test_a_mirror_serving_them_fails_the_fetch_without_the_memory(issue_files, tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    folder = tmp_path / "mirror"
    folder.mkdir()
    release = pretrained.release_for("t2t_vit_7", "imagenet")
    (folder / release.file).write_bytes(issue_files[kind].read_bytes())
    monkeypatch.setenv(pretrained.URL_SETTING, str(folder))
    code, peak, _ = traced(weights_cli.main, ["fetch", "t2t_vit_7:imagenet"])
    errors = capsys.readouterr().err.splitlines()
    assert code == 1 and errors[0].startswith("error: t2t_vit_7:imagenet: ") and errors[1:] == ["1 of 1 failed"]
    assert REASONS[kind] in errors[0], errors[0]
    assert sorted(p.name for p in (tmp_path / "keras_home" / "keras_t2t").iterdir()) in ([], ["index.json"])
    assert peak < SMALL, peak


# -- aliasing: views count in full ----------------------------------------------------


def aliased(tmp_path, views, numel=MIB // 4):
    """``views`` tensors over one float32 storage of ``numel`` elements (1 MiB), stored."""
    storage = Storage("0", numel)
    tensors = {f"w{i}": Tensor(storage, (numel,), (1,)) for i in range(views)}
    return hand_checkpoint(tmp_path / f"aliased_{views}.pth", tensors, {"0": np.arange(numel, dtype="<f4").tobytes()})


def test_views_of_one_storage_count_once_each_against_the_limit(tmp_path):
    path = aliased(tmp_path, views=4)
    message, peak = refused(path, max_bytes=3 * MIB)  # the storage (1 MiB) fits; its four arrays do not
    assert f"{4 * MIB:,} bytes of arrays" in message and f"{3 * MIB:,}" in message and "tensor 'w" in message
    assert peak < MIB // 2, peak  # refused before the 1 MiB record was read
    got, peak, _ = traced(read_checkpoint, path, max_bytes=4 * MIB)
    assert sorted(got) == ["w0", "w1", "w2", "w3"]
    got["w0"][0] = -1.0  # four independent arrays
    assert got["w1"][0] == 0.0 and got["w3"][-1] == MIB // 4 - 1
    assert peak < 1 * MIB + 4 * MIB + SLACK, peak  # the storage plus its four arrays


def test_views_count_in_full_in_the_legacy_layout_too(tmp_path):
    base = torch.zeros(MIB // 4)
    path = tmp_path / "legacy.pth"
    torch.save({f"w{i}": base[:] for i in range(4)}, path, _use_new_zipfile_serialization=False)
    message, peak = refused(path, max_bytes=3 * MIB)
    assert f"{4 * MIB:,} bytes of arrays" in message
    assert peak < MIB // 2, peak  # refused before the raw storage was read
    assert len(read_checkpoint(path, max_bytes=4 * MIB)) == 4


def test_a_tensor_named_twice_is_one_array_and_counts_once(tmp_path):
    storage = Storage("0", MIB // 4)
    tensor = Tensor(storage, (MIB // 4,), (1,))
    path = hand_checkpoint(tmp_path / "twice.pth", {"a": tensor, "b": tensor}, {"0": bytes(MIB)})
    got = read_checkpoint(path, max_bytes=MIB)
    assert got["a"] is got["b"]


# -- stride 0: an expansion counts at its expanded size ------------------------------


def expanded(tmp_path, shape, kind="FloatStorage", value=b"\x00\x00\x80\x3f"):
    """One element (1.0) expanded with stride 0 to ``shape``."""
    tensors = {"weight": Tensor(Storage("0", 1, kind), shape, (0,) * len(shape))}
    return hand_checkpoint(tmp_path / f"expanded_{kind}.pth", tensors, {"0": value})


def test_a_stride_0_expansion_counts_at_its_expanded_size(tmp_path):
    path = expanded(tmp_path, (1024, 1024))
    message, peak = refused(path, max_bytes=4 * MIB - 1)
    assert f"{4 * MIB:,} bytes of arrays" in message and "tensor 'weight'" in message
    got, peak, _ = traced(read_checkpoint, path, max_bytes=4 * MIB)
    assert got["weight"].shape == (1024, 1024) and got["weight"].flags.writeable and np.all(got["weight"] == 1.0)
    assert peak < 4 * MIB + SLACK, peak


def test_an_expanded_bfloat16_tensor_is_built_in_one_allocation_as_float32(tmp_path):
    path = expanded(tmp_path, (1024, 1024), "BFloat16Storage", b"\x80\x3f")  # bfloat16 1.0
    got, peak, _ = traced(read_checkpoint, path)
    assert got["weight"].dtype == np.float32 and np.all(got["weight"] == 1.0)
    # 4 MiB of float32; widening through a uint16 copy, a uint32 copy and a shifted one held up to 10 MiB.
    assert peak < 4 * MIB + SLACK, peak


def test_no_tensor_may_hold_more_elements_than_the_largest_model_unless_the_limit_is_raised(tmp_path):
    path = expanded(tmp_path, (LARGEST_MODEL_WEIGHTS + 1,), "ByteStorage", b"\x07")
    message, peak = refused(path)  # 64 MB of uint8 fit the byte limit, not the element limit
    assert f"{LARGEST_MODEL_WEIGHTS + 1:,} elements" in message and "max_bytes=" in message
    assert peak < SMALL
    raised = 32 * (LARGEST_MODEL_WEIGHTS + 1)  # the element limit follows a raised byte limit
    assert read_checkpoint(path, max_bytes=raised)["weight"].shape == (LARGEST_MODEL_WEIGHTS + 1,)


N = MIB  # the float32 elements of the storage below: 4 MiB, deflated to ~4 KB


@pytest.mark.parametrize("offset, size, stride", [
    (0, (2, N // 2 + 1), (N // 2, 1)),  # the last row ends past the storage
    (N - 1, (2,), (1,)),                # the offset leaves one element, the tensor needs two
    (0, (3, 2), (2 ** 62, 1)),          # a stride far outside it
])
def test_a_tensor_reaching_outside_its_storage_is_refused_before_its_record_is_inflated(tmp_path, offset, size,
                                                                                         stride):
    tensors = {"weight": Tensor(Storage("0", N), size, stride, offset)}
    record = (deflated_zeros(4 * N), 4 * N, zlib.crc32(bytes(4 * N)), 8)
    message, peak = refused(hand_checkpoint(tmp_path / "outside.pth", tensors, {"0": record}))
    assert "tensor 'weight'" in message and f"holds only {N:,} elements" in message, message
    assert peak < MIB, peak  # the 4 MiB record was never inflated


# -- lying headers: inflated up to what the header declares, never past it -------------


def small_checkpoint(tmp_path, record, name="liar.pth"):
    """A checkpoint of one float32 tensor of 256 elements (1,024 bytes) whose storage record is ``record``."""
    return hand_checkpoint(tmp_path / name, {"weight": Tensor(Storage("0", 256), (256,), (1,))}, {"0": record})


@pytest.mark.parametrize("inflated, problem", [
    (4 * MIB, "inflates to more than the 1,024 bytes its zip header declares"),
    (512, "inflates to only 512 of the 1,024 bytes its header declares"),
])
def test_a_deflate_stream_longer_or_shorter_than_its_header_is_refused(tmp_path, inflated, problem):
    stream = deflated_zeros(inflated) if inflated >= MIB else deflated(bytes(inflated))
    message, peak = refused(small_checkpoint(tmp_path, (stream, 1024, zlib.crc32(bytes(1024)), 8)))
    assert problem in message and "'archive/data/0'" in message, message
    assert peak < MIB


def test_a_record_that_fails_its_crc_is_refused(tmp_path):
    values = np.arange(256, dtype="<f4").tobytes()
    message, _ = refused(small_checkpoint(tmp_path, (deflated(values), 1024, zlib.crc32(values) ^ 1, 8)))
    assert "'archive/data/0'" in message and "CRC" in message, message


def test_a_stored_record_whose_header_sizes_disagree_is_refused(tmp_path):
    values = np.arange(512, dtype="<f4").tobytes()  # 2,048 bytes stored, 1,024 declared
    message, _ = refused(small_checkpoint(tmp_path, (values, 1024, zlib.crc32(values[:1024]), 0)))
    assert "'archive/data/0'" in message and "stores 2,048 bytes" in message, message


def test_a_pickle_record_that_inflates_past_its_header_is_refused(tmp_path):
    path = hand_checkpoint(tmp_path / "ok.pth", {"weight": Tensor(Storage("0", 256), (256,), (1,))},
                           {"0": bytes(1024)})
    records = records_of(path)
    pickled = records["archive/data.pkl"]
    stream = deflated(pickled + bytes(64 * MIB))  # the pickle, then 64 MiB the header does not declare
    records["archive/data.pkl"] = (stream, len(pickled), zlib.crc32(pickled), 8)
    message, peak = refused(write_zip(tmp_path / "pickle_liar.pth", records))
    assert f"'archive/data.pkl' inflates to more than the {len(pickled):,} bytes" in message, message
    assert peak < SMALL


def test_honest_deflated_records_still_read(tmp_path):
    values = np.arange(256, dtype="<f4").tobytes()
    path = small_checkpoint(tmp_path, (deflated(values), 1024, zlib.crc32(values), 8), "deflated.pth")
    np.testing.assert_array_equal(read_checkpoint(path)["weight"], np.arange(256, dtype="float32"))


# -- the bound ----------------------------------------------------------------------


def test_reading_peaks_at_most_at_the_storages_plus_the_arrays(tmp_path):
    # torch.save's own file: four views of a 4 MiB parameter, a bfloat16 tensor, an expanded buffer.
    base = torch.arange(MIB, dtype=torch.float32)
    tensors = {"base": base, "rows": base.view(1024, 1024)[::2], "cols": base.view(1024, 1024)[:, ::2],
               "t": base.view(1024, 1024).T, "half": torch.ones(MIB // 2, dtype=torch.bfloat16),
               "grid": torch.ones(1, 1).expand(512, 1024)}
    path = tmp_path / "views.pth"
    torch.save(tensors, path)
    storages = 4 * MIB + MIB + 4
    arrays = 4 * MIB + 2 * MIB + 2 * MIB + 4 * MIB + 2 * MIB + 2 * MIB
    with pytest.raises(CheckpointError, match=f"{arrays:,} bytes of arrays"):
        read_checkpoint(path, max_bytes=arrays - 1)
    got, peak, _ = traced(read_checkpoint, path, max_bytes=arrays)
    for key, tensor in tensors.items():
        np.testing.assert_array_equal(got[key], tensor.float().numpy())
    # Documented: at most the inflated storages plus the arrays, so about twice max_bytes at worst.
    assert peak < storages + arrays + SLACK, (peak, storages + arrays)
    assert peak < 2 * arrays
