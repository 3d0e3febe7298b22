"""Tests for the torch-free, restricted checkpoint reader."""

import argparse
import builtins
import collections
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_t2t.weights.torch_pickle import (  # noqa: E402
    ALLOWED_GLOBALS,
    CheckpointError,
    CheckpointNamespace,
    extract_state_dict,
    load_state_dict_file,
    read_checkpoint,
)

LEGACY = {"_use_new_zipfile_serialization": False}


def _np(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


def _assert_same(arr, t):
    ref = _np(t)
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == ref.dtype, (arr.dtype, ref.dtype)
    assert arr.shape == ref.shape
    np.testing.assert_array_equal(arr, ref)


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))


def _timm_like_checkpoint():
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sd = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    ema = collections.OrderedDict((k, v * 0.5 + 1.0) for k, v in model.state_dict().items())
    args = argparse.Namespace(model="t2t_vit_14", lr=5e-4, img_size=224, drop=[0.0, 0.1], amp=True, name=None)
    ckpt = {
        "epoch": 309,
        "arch": "t2t_vit_14",
        "state_dict": sd,
        "state_dict_ema": ema,
        "optimizer": opt.state_dict(),
        "args": args,
        "version": 2,
        "metric": 81.5,
    }
    return ckpt, model, opt


def _compare_tree(got, ref):
    if isinstance(ref, torch.Tensor):
        _assert_same(got, ref)
    elif isinstance(ref, dict):
        assert type(got) is dict
        assert list(got) == list(ref)
        for k in ref:
            _compare_tree(got[k], ref[k])
    elif isinstance(ref, (list, tuple)):
        assert type(got) is type(ref) and len(got) == len(ref)
        for a, b in zip(got, ref):
            _compare_tree(a, b)
    else:
        assert got == ref and type(got) is type(ref)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_timm_container_roundtrip(tmp_path, legacy):
    ckpt, model, opt = _timm_like_checkpoint()
    path = tmp_path / "ckpt.pth.tar"
    torch.save(ckpt, path, **(LEGACY if legacy else {}))
    got = read_checkpoint(path)
    assert set(got) == set(ckpt)
    assert got["epoch"] == 309 and got["arch"] == "t2t_vit_14"
    assert got["version"] == 2 and got["metric"] == 81.5
    _compare_tree(got["state_dict"], ckpt["state_dict"])
    _compare_tree(got["state_dict_ema"], ckpt["state_dict_ema"])
    _compare_tree(got["optimizer"], ckpt["optimizer"])
    assert got["optimizer"]["state"][0]["exp_avg"].shape == (3, 4)
    args = got["args"]
    assert isinstance(args, CheckpointNamespace)
    assert vars(args) == vars(ckpt["args"])
    assert args.model == "t2t_vit_14" and args.drop == [0.0, 0.1]

    sd, src = extract_state_dict(got)
    assert src == "state_dict_ema"
    assert set(sd) == set(model.state_dict())
    for k, v in model.state_dict().items():
        _assert_same(sd[k], v * 0.5 + 1.0)
    sd, src = extract_state_dict(got, prefer_ema=False)
    assert src == "state_dict"
    assert set(sd) == set(model.state_dict())  # 'module.' stripped
    for k, v in model.state_dict().items():
        _assert_same(sd[k], v)
    sd, src = extract_state_dict(got, which="state_dict")
    assert src == "state_dict"

    sd, info = load_state_dict_file(path)
    assert info == {"source_key": "state_dict_ema", "arch": "t2t_vit_14", "epoch": 309}
    sd, info = load_state_dict_file(path, prefer_ema=False)
    assert info["source_key"] == "state_dict"


def test_which_missing_lists_keys(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"state_dict": _tiny_model().state_dict(), "epoch": 1}, path)
    obj = read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"no 'state_dict_ema'.*'state_dict', 'epoch'"):
        extract_state_dict(obj, which="state_dict_ema")
    with pytest.raises(CheckpointError, match="not one of"):
        extract_state_dict(obj, which="weights")
    sd, src = extract_state_dict(obj)  # no EMA: falls back
    assert src == "state_dict"
    with pytest.raises(CheckpointError, match="keys present"):
        extract_state_dict({"epoch": 3, "foo": "bar"})


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_bare_and_model_state_dict(tmp_path, legacy):
    model = _tiny_model()
    kw = LEGACY if legacy else {}
    bare = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, bare, **kw)
    sd, info = load_state_dict_file(bare)
    assert info == {"source_key": "bare"}
    for k, v in model.state_dict().items():
        _assert_same(sd[k], v)
    wrapped = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "epoch": 7}, wrapped, **kw)
    sd, info = load_state_dict_file(wrapped)
    assert info == {"source_key": "model", "epoch": 7}
    assert set(sd) == set(model.state_dict())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dtypes_views_and_shared_storage(tmp_path, legacy):
    big = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    hb = (torch.arange(24, dtype=torch.float32) / 7).to(torch.bfloat16).reshape(4, 6)
    tensors = {
        "big": big,
        "t": big[2:5].T,  # non-contiguous view with a storage offset
        "row": big[3],
        "col": big[:, 7],
        "strided": big[1::2, ::3],
        "f16": torch.linspace(-3, 3, 12, dtype=torch.float16).reshape(3, 4),
        "bf16": hb,
        "bf16_view": hb[1:, 2:5].T,
        "i64": torch.arange(-5, 5, dtype=torch.int64) * 10**12,
        "i32": torch.arange(7, dtype=torch.int32),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f64": torch.tensor([1.0 / 3.0, -2.5], dtype=torch.float64),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    if not legacy:
        tensors["u16"] = torch.arange(65530, 65536, dtype=torch.int32).to(torch.uint16)  # _rebuild_tensor_v3
    path = tmp_path / "t.pth"
    torch.save(tensors, path, **(LEGACY if legacy else {}))
    got = read_checkpoint(path)
    assert list(got) == list(tensors)
    for k, t in tensors.items():
        if k == "u16":
            assert got[k].dtype == np.uint16
            np.testing.assert_array_equal(got[k], np.arange(65530, 65536, dtype=np.uint16))
        else:
            _assert_same(got[k], t)
    assert got["bf16"].dtype == np.float32
    assert got["t"].shape == (10, 3)
    # independent arrays: writing one does not change another
    got["big"][0, 0] = -1
    assert got["t"][0, 0] == 20.0


def test_misc_values(tmp_path):
    obj = {
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "set": {1, 2},
        "fs": frozenset({"a"}),
        "tuple": (1, "x", None),
        "bytes": b"\x00\xffab",
        "complex": 1 + 2j,
        "np_metric": np.float64(81.25),
        "np_int": np.int64(-3),
        "od": collections.OrderedDict(b=1, a=2),
    }
    path = tmp_path / "m.pth"
    torch.save(obj, path)
    got = read_checkpoint(path)
    assert got["size"] == (2, 3) and type(got["size"]) is tuple
    assert got["dtype"] == "torch.float16"
    assert got["device"] == "cpu"
    assert got["set"] == {1, 2} and got["fs"] == frozenset({"a"})
    assert got["tuple"] == (1, "x", None)
    assert got["bytes"] == b"\x00\xffab"
    assert got["complex"] == 1 + 2j
    assert got["np_metric"] == 81.25 and got["np_int"] == -3
    assert type(got["od"]) is dict and list(got["od"]) == ["b", "a"]


def _rewrite_zip(src, dst, replace):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)


def test_big_endian_zip(tmp_path):
    tensors = {"f": torch.arange(6.0).reshape(2, 3), "i": torch.arange(4, dtype=torch.int64) - 2}
    src = tmp_path / "le.pth"
    torch.save(tensors, src)
    swaps = {"/data/0": 4, "/data/1": 8}
    with zipfile.ZipFile(src) as z:
        order = {name.rsplit("/data/", 1)[1] for name in z.namelist() if "/data/" in name}
    assert order == {"0", "1"}
    dst = tmp_path / "be.pth"
    _rewrite_zip(
        src,
        dst,
        {
            "/byteorder": b"big",
            **{k: (lambda d, n=n: np.frombuffer(d, f"<u{n}").byteswap().tobytes()) for k, n in swaps.items()},
        },
    )
    got = read_checkpoint(dst)
    for k, t in tensors.items():
        _assert_same(got[k], t)


def test_out_of_bounds_view_is_rejected(tmp_path):
    src = tmp_path / "ok.pth"
    torch.save({"t": torch.arange(7.0)[2:5]}, src)
    with zipfile.ZipFile(src) as z:
        pkl_name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        pkl = z.read(pkl_name)
    assert pkl.count(b"K\x03\x85") == 1
    dst = tmp_path / "bad.pth"
    _rewrite_zip(src, dst, {"data.pkl": pkl.replace(b"K\x03\x85", b"K\x09\x85")})
    with pytest.raises(CheckpointError, match="holds only 7 elements"):
        read_checkpoint(dst)


# --------------------------------------------------------------------------
# Safety
# --------------------------------------------------------------------------


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    m = str(marker)
    return {
        "os.system": _Evil(os.system, (f"touch '{m}'",)),
        "eval": _Evil(builtins.eval, (f"open({m!r}, 'w').close()",)),
        "subprocess": _Evil(subprocess.check_call, (["touch", m],)),
    }


def _legacy_bytes(obj_pickle):
    header = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    return header + obj_pickle + pickle.dumps([], protocol=2)


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, kind, container):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    # Hide the payload inside an otherwise normal training checkpoint.
    evil_obj = {"state_dict": {"w": 1}, "args": payload, "epoch": 1}
    evil_pickle = pickle.dumps(evil_obj, protocol=2)

    # Sanity: the payload is real (plain pickle would run it).
    pickle.loads(evil_pickle)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / f"evil_{container}.pth"
    if container == "zip":
        good = tmp_path / "good.pth"
        torch.save({"state_dict": {"w": torch.ones(2)}}, good)
        _rewrite_zip(good, path, {"data.pkl": evil_pickle})
    else:
        path.write_bytes(_legacy_bytes(evil_pickle))
    with pytest.raises(CheckpointError, match="forbidden global") as exc:
        read_checkpoint(path)
    assert str(path) in str(exc.value)
    expected = {"os.system": "system", "eval": "builtins.eval", "subprocess": "subprocess.check_call"}[kind]
    assert expected in str(exc.value)
    assert not marker.exists()


def test_other_forbidden_globals(tmp_path):
    # A full nn.Module pickle and a numpy array are refused too (not plain data).
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="forbidden global 'torch.nn.modules.linear.Linear'"):
        read_checkpoint(path)
    path = tmp_path / "nparray.pth"
    torch.save({"a": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="forbidden global"):
        read_checkpoint(path)
    assert "builtins.eval" not in ALLOWED_GLOBALS and "collections.OrderedDict" in ALLOWED_GLOBALS


@pytest.mark.parametrize(
    "body, match",
    [
        # BUILD (setstate / slot state) on an allowed function: must not mutate it
        (b"ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__}\x85s\x86b.", "unexpected state"),
        (b"ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00__code__K\x01sb.", "unexpected state"),
        (b"ctorch\nfloat32\nN}X\x04\x00\x00\x00nameK\x01s\x86b.", "unexpected state"),
        # a persistent id that is not a storage
        (b"(X\x06\x00\x00\x00moduleK\x01tQ.", "unsupported persistent id"),
        # a bare global used as a value
        (b"ctorch._utils\n_rebuild_tensor_v2\n.", "bare reference"),
        # huge memo index / deep nesting
        (b"Nr\xff\xff\xff\x7f.", "too large|corrupt"),
        (b"]" * 50000 + b"a" * 49999 + b".", "nested|corrupt"),
    ],
)
def test_hostile_pickle_opcodes(tmp_path, body, match):
    path = tmp_path / "hostile.pth"
    path.write_bytes(_legacy_bytes(b"\x80\x02" + body))
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)
    # the allowed globals are still intact for the next (legitimate) load
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    np.testing.assert_array_equal(read_checkpoint(good)["w"], np.arange(3.0, dtype=np.float32))


# --------------------------------------------------------------------------
# Not-a-checkpoint inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file(tmp_path, legacy):
    ckpt, _, _ = _timm_like_checkpoint()
    path = tmp_path / "full.pth"
    torch.save(ckpt, path, **(LEGACY if legacy else {}))
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt") as exc:
        read_checkpoint(cut)
    assert str(cut) in str(exc.value)
    # cutting only the last bytes (inside the raw storages) is caught too
    cut.write_bytes(data[:-3])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        read_checkpoint(cut)


def test_not_a_checkpoint(tmp_path):
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(rnd)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)

    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)

    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        read_checkpoint(missing)
    with pytest.raises(CheckpointError):
        read_checkpoint(missing)

    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(no '<name>/data.pkl'"):
        read_checkpoint(other_zip)

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        read_checkpoint(plain)

    not_dict = tmp_path / "list.pth"
    torch.save([torch.ones(1)], not_dict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_state_dict_file(not_dict)
