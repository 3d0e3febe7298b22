"""The checkpoint reader's size limits: nothing is inflated before its declared size is checked.

A zip record says how many bytes it inflates to. A deflate stream of zeros is ~1000x smaller
than what it inflates to, so a file of a few MB can claim gigabytes: the reader must compare
every declared size with what the pickle declares and with a ceiling tied to the largest
model (``MAX_CHECKPOINT_BYTES``) before it reads any record. The bombs below are written by
hand (no gigabytes are ever produced here) and read under ``tracemalloc``.
"""

import collections
import pickle
import struct
import tracemalloc
import zipfile
import zlib

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
from keras_t2t.models.presets import MODELS  # noqa: E402
from keras_t2t.weights.torch_pickle import (  # noqa: E402
    LARGEST_MODEL_WEIGHTS,
    MAX_CHECKPOINT_BYTES,
    MAX_PICKLE_BYTES,
    CheckpointError,
    read_checkpoint,
)

MIB = 1 << 20
# What reading a refused bomb may allocate at most (the pickle, the zip directory, Python objects).
SMALL = 16 * MIB


def deflated_zeros(size_mib):
    """A raw deflate stream of ``size_mib`` MiB of zeros, built from one compressed MiB (~1 KB).

    After a full flush the compressor starts afresh, so every MiB compresses to the same bytes.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return one * size_mib + compressor.flush(zlib.Z_FINISH)


def write_zip(path, records):
    """A zip archive by hand: ``records`` is [(name, bytes)] (stored) or [(name, (deflated, size, crc))]."""
    body, directory = bytearray(), bytearray()
    for name, record in records:
        if isinstance(record, bytes):
            method, data, size, crc = 0, record, len(record), zlib.crc32(record)
        else:
            method, (data, size, crc) = 8, record
        name = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(data), size)
        directory += b"PK\x01\x02" + struct.pack("<H", 20) + fields
        directory += struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, len(body)) + name
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name + data
    end = struct.pack("<HHHHIIH", 0, 0, len(records), len(records), len(directory), len(body), 0)
    with open(path, "wb") as handle:
        handle.write(bytes(body) + bytes(directory) + b"PK\x05\x06" + end)
    return path


class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch's own tensors do: ``_rebuild_tensor_v2`` over a persistent storage."""

    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        rebuild = torch._utils._rebuild_tensor_v2
        return rebuild, (self.storage, 0, (self.storage.numel,), (1,), False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def data_pkl(**storages):
    """The pickle of a state dict {name: float32 tensor over a storage of numel elements}."""
    import io

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({name: _Tensor(_Storage(str(i), numel))
                                       for i, (name, numel) in enumerate(storages.items())})
    return buffer.getvalue()


def read_traced(path):
    """read_checkpoint(path)'s error and the peak of what Python allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        return str(error.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# A bomb's CRC is left out: a reader that inflated it would notice only after allocating it all.
NO_CRC = 0
BOMB_MIB = MAX_CHECKPOINT_BYTES // MIB + 64  # just over the ceiling: ~2 GiB claimed by a ~2 MB file


def test_the_ceiling_holds_the_largest_t2t_vits_training_checkpoint():
    # The reader is for the authors' T2T-ViT checkpoints; the largest registry row is T2T-ViT-24.
    t2t_rows = [p for p in MODELS.values() if p.family != "vit"]
    assert max(p.config.get("embed_dim", 0) * p.config.get("depth", 0) for p in t2t_rows) == 512 * 24
    if keras.backend.backend() == "tensorflow":  # the count does not depend on the backend
        assert keras_t2t.t2t_vit_24().count_params() == LARGEST_MODEL_WEIGHTS == 64_105_934
    # Weights, EMA and AdamW's two moments (timm's training checkpoint), float32, with a factor 2 to spare.
    assert MAX_CHECKPOINT_BYTES == 4 * 4 * 2 * LARGEST_MODEL_WEIGHTS


def test_a_deflate_bomb_storage_is_refused_before_it_is_inflated(tmp_path):
    stream = deflated_zeros(BOMB_MIB)
    numel = BOMB_MIB * MIB // 4
    path = write_zip(tmp_path / "bomb.pth", [
        ("archive/data.pkl", data_pkl(weight=numel)),
        ("archive/byteorder", b"little"),
        ("archive/data/0", (stream, BOMB_MIB * MIB, NO_CRC)),
    ])
    assert path.stat().st_size < 4 * MIB
    message, peak = read_traced(path)
    assert f"declares {BOMB_MIB * MIB:,} bytes of tensors" in message
    assert f"{MAX_CHECKPOINT_BYTES:,}" in message and str(path) in message
    assert peak < SMALL


def test_a_record_larger_than_its_storage_is_refused_before_it_is_inflated(tmp_path):
    stream = deflated_zeros(BOMB_MIB)
    path = write_zip(tmp_path / "liar.pth", [
        ("archive/data.pkl", data_pkl(weight=8)),
        ("archive/data/0", (stream, BOMB_MIB * MIB, NO_CRC)),
    ])
    message, peak = read_traced(path)
    assert f"'archive/data/0' inflates to {BOMB_MIB * MIB:,} bytes" in message and "32 bytes" in message
    assert peak < SMALL


@pytest.mark.parametrize("record", ["archive/data.pkl", "archive/byteorder"])
def test_a_deflate_bomb_pickle_or_byteorder_record_is_refused_before_it_is_inflated(tmp_path, record):
    size_mib = MAX_PICKLE_BYTES // MIB + 16
    stream = deflated_zeros(size_mib)
    records = {"archive/data.pkl": data_pkl(weight=8), "archive/byteorder": b"little",
               "archive/data/0": np.zeros(8, "<f4").tobytes()}
    records[record] = (stream, size_mib * MIB, NO_CRC)
    message, peak = read_traced(write_zip(tmp_path / "bomb.pth", list(records.items())))
    assert f"'{record}' inflates to {size_mib * MIB:,} bytes" in message
    assert peak < SMALL


def test_the_hand_written_zip_is_a_checkpoint_the_reader_accepts(tmp_path):
    # The bombs differ from this file only in their sizes: the refusals above are the limits at work.
    values = np.arange(8, dtype="<f4")
    path = write_zip(tmp_path / "ok.pth", [
        ("archive/data.pkl", data_pkl(weight=8)),
        ("archive/byteorder", b"little"),
        ("archive/data/0", (zlib.compress(values.tobytes())[2:-4], 32, zlib.crc32(values.tobytes()))),
    ])
    assert zipfile.is_zipfile(path)
    np.testing.assert_array_equal(read_checkpoint(path)["weight"], values)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_limit_can_be_lowered_or_raised_and_holds_for_both_layouts(tmp_path, legacy):
    path = tmp_path / "two.pth"
    torch.save({"w": torch.arange(16.0)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="max_bytes="):
        read_checkpoint(path, max_bytes=32)
    np.testing.assert_array_equal(read_checkpoint(path, max_bytes=64)["w"], np.arange(16.0, dtype="float32"))
