"""Safe reader for PyTorch checkpoint files (``*.pth``, ``*.pth.tar``).

Reads what ``torch.save`` writes **without torch installed** and **without
running any code from the file**, in both layouts: the zip format (the default
since torch 1.6: ``<name>/data.pkl`` holding the pickled object, one
``<name>/data/<key>`` record per storage, usually ``<name>/byteorder``) and the
legacy one (``_use_new_zipfile_serialization=False``: pickled magic number,
protocol version and system-info dict, the object, the list of storage keys,
then each storage's raw bytes).

The object pickle is read by a :class:`pickle.Unpickler` whose ``find_class``
resolves only :data:`ALLOWED_GLOBALS`, each to a harmless replacement defined
here (no torch, numpy or argparse function is ever called through the pickle).
Tensors come back as ``numpy.ndarray`` (``bfloat16`` as ``float32``),
``OrderedDict`` as ``dict``, ``torch.Size`` as ``tuple``, ``argparse.Namespace``
as :class:`CheckpointNamespace`, ``torch.dtype``/``torch.device`` as strings.
Anything else is refused with :class:`CheckpointError`.

Sizes are checked before anything is inflated: every zip record against what the
pickle declares of it, the pickle against ``MAX_PICKLE_BYTES``, and against
``max_bytes`` (``MAX_CHECKPOINT_BYTES``) the storages and the arrays they will
become (each tensor as built: a view in full, a stride-0 expansion expanded; none
outside its storage or larger than the largest model). Records inflate through a
decompressor capped at what their header declares, never trusting it. So reading
holds at most the storages plus the arrays: about twice ``max_bytes`` at the peak.

Public API: :func:`read_checkpoint`, :func:`extract_state_dict`,
:func:`load_state_dict_file`, :func:`normalize_state_dict` and :class:`CheckpointError`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import math
import os
import pickle
import struct
import types
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS", "DATA_PARALLEL_PREFIX", "LARGEST_MODEL_WEIGHTS", "MAX_CHECKPOINT_BYTES", "MAX_PICKLE_BYTES",
    "CheckpointError", "CheckpointNamespace", "CheckpointNotFoundError", "extract_state_dict", "load_state_dict_file",
    "normalize_state_dict", "read_checkpoint",
]

_ACCEPTED = (
    "accepted: files written by torch.save (zip format of torch>=1.6 or the "
    "legacy format) holding tensors, plain Python containers and scalars, "
    "OrderedDict, torch.Size, torch dtypes/devices and argparse.Namespace"
)

# The largest model whose checkpoints this reader is for: T2T-ViT-24, the registry's largest
# T2T-ViT (64,105,934 weights at 224 with 1000 classes; tests/weights/test_checkpoint_limits.py
# keeps this true).
LARGEST_MODEL_WEIGHTS = 64_105_934
# The tensors a checkpoint may declare in all: timm's training checkpoint holds the weights, their
# EMA and AdamW's two moments (4 float32 copies), with a factor 2 to spare (float64 files, larger
# position tables): ~2.05 GB. Bigger is refused before any record is inflated.
MAX_CHECKPOINT_BYTES = 4 * 4 * 2 * LARGEST_MODEL_WEIGHTS
# The object pickle (names, shapes, scalars: ~100 KB for T2T-ViT-24 with its optimizer state).
MAX_PICKLE_BYTES = 16 << 20
# The byteorder record: "little" or "big".
_MAX_BYTEORDER_BYTES = 16
# What a zip record is read and inflated by at a time.
_CHUNK = 1 << 18
_RAISE_LIMIT = ("For a bigger checkpoint of your own, pass max_bytes= to "
                "keras_t2t.weights.torch_pickle.read_checkpoint or load_state_dict_file.")

# Magic number and protocol version at the start of a legacy torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class CheckpointError(ValueError):
    """A file is not a readable (or not a safe) PyTorch checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class CheckpointNamespace(types.SimpleNamespace):
    """What a pickled ``argparse.Namespace`` becomes (``vars(ns)`` gives a dict)."""


# -- dtypes -------------------------------------------------------------------

# torch dtype name -> (raw numpy dtype code as stored, itemsize).  The raw code
# is read with the file's byte order; "bf16" is read as uint16 and widened to
# float32, "bool" is read as uint8 and compared with 0.
_DTYPE_SPECS = {
    "float64": ("f8", 8), "float32": ("f4", 4), "float16": ("f2", 2), "bfloat16": ("u2", 2),
    "int64": ("i8", 8), "int32": ("i4", 4), "int16": ("i2", 2), "int8": ("i1", 1),
    "uint8": ("u1", 1), "uint16": ("u2", 2), "uint32": ("u4", 4), "uint64": ("u8", 8),
    "bool": ("u1", 1), "complex64": ("c8", 8), "complex128": ("c16", 16),
}

# Attribute names of torch dtypes that may appear as globals ("torch.float").
_TORCH_DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
}
_TORCH_DTYPE_ALIASES.update({name: name for name in _DTYPE_SPECS})

# Real torch dtypes with no numpy counterpart: they may be named in a file, but
# a tensor of such a dtype cannot be converted.
_UNSUPPORTED_DTYPES = frozenset(
    "float8_e5m2 float8_e4m3fn float8_e5m2fnuz float8_e4m3fnuz float8_e8m0fnu float4_e2m1fn_x2 "
    "complex32 chalf qint8 qint32 quint8 quint4x2 quint2x4 bits1x8 bits2x4 bits4x2 bits8 bits16".split()
)

# Legacy typed storage class -> dtype of its elements.
_STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
_QUANTIZED_STORAGES = frozenset("QInt8Storage QInt32Storage QUInt8Storage QUInt4x2Storage QUInt2x4Storage".split())

# numpy scalar dtypes accepted inside ``numpy.core.multiarray.scalar``.
_NUMPY_SCALAR_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "c8", "c16"})


class _ReadOnly:
    """What the pickle may name but never change: attribute writes and BUILD (setstate) are refused."""

    __slots__ = ()

    def __setattr__(self, key, value):
        raise AttributeError("read-only")

    def __setstate__(self, state):
        raise CheckpointError(f"unexpected state applied to {self!r}")


class _Marker(_ReadOnly):
    """Immutable stand-in for a torch global that is only a tag (dtype, type)."""

    __slots__ = ("kind", "name", "value")

    def __init__(self, kind, name, value=None):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __repr__(self):
        return self.name


def _dtype_marker(attr):
    canonical = _TORCH_DTYPE_ALIASES.get(attr, attr)
    return _Marker("dtype", f"torch.{canonical}", canonical)


_DTYPE_MARKERS = {a: _dtype_marker(a) for a in list(_TORCH_DTYPE_ALIASES) + sorted(_UNSUPPORTED_DTYPES)}
_STORAGE_MARKERS = {n: _Marker("storage", f"torch.{n}", d) for n, d in _STORAGE_TYPES.items()}
_UNTYPED_STORAGE = _Marker("storage", "torch.UntypedStorage", None)
_TENSOR_TYPE = _Marker("type", "torch.Tensor")
_PARAMETER_TYPE = _Marker("type", "torch.nn.Parameter")
# The globals that are only tags: the same immutable objects in every load.
_MARKER_GLOBALS = {
    **{(m, "Tensor"): _TENSOR_TYPE for m in ("torch", "torch._tensor")},
    **{(m, "Parameter"): _PARAMETER_TYPE for m in ("torch.nn.parameter", "torch.nn")},
    **{(m, "UntypedStorage"): _UNTYPED_STORAGE for m in ("torch", "torch.storage")},
    **{(m, n): marker for n, marker in _STORAGE_MARKERS.items() for m in ("torch", "torch.cuda")},
    **{("torch", n): marker for n, marker in _DTYPE_MARKERS.items()},
}
# The torch._utils functions that rebuild a tensor: the only ones ``_rebuild_from_type`` may call.
_TENSOR_BUILDERS = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
    "_rebuild_parameter", "_rebuild_parameter_with_state",
)


# -- Placeholders built while unpickling, turned into numpy afterwards --------


class _StorageRoot:
    """One storage record of the file (``data/<key>`` or a legacy raw block)."""

    __slots__ = ("key", "dtype", "numel", "nbytes", "data", "pending")

    def __init__(self, key, dtype, numel):
        self.key = key
        self.dtype = dtype  # torch dtype name; "uint8" for an untyped storage
        self.numel = numel
        self.nbytes = numel * _DTYPE_SPECS[dtype][1]
        self.data = None  # bytes once read
        self.pending = 0  # tensors still to be materialised from it

    def __setstate__(self, state):
        raise CheckpointError("unexpected state applied to a storage")


@dataclasses.dataclass(slots=True, eq=False, repr=False)
class _StorageRef:
    """A storage as seen by the pickle: a root plus a byte window into it."""

    root: _StorageRoot
    byte_offset: int
    nbytes: int
    dtype: str
    untyped: bool

    __hash__ = None
    __setstate__ = _StorageRoot.__setstate__


@dataclasses.dataclass(slots=True, eq=False)
class _TensorRef:
    storage: object
    offset: int
    size: tuple
    stride: tuple
    dtype: object
    metadata: object

    __hash__ = None  # like a tensor in a dict key: refuse

    def __setstate__(self, state):
        raise CheckpointError("unexpected state applied to a tensor")


class _NumpyDType:
    """Stand-in for ``numpy.dtype(code)``; only feeds :meth:`_np_scalar`."""

    __slots__ = ("code", "order")

    def __init__(self, code):
        self.code = code
        self.order = "<"

    __hash__ = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise CheckpointError("unexpected state for a numpy dtype")
        self.order = "<" if state[1] in ("|", "=") else state[1]


class _Callable(_ReadOnly):
    """Per-load wrapper around an allowed function: immutable from the pickle."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args):
        return self._fn(*args)

    def __repr__(self):
        return self._name


def _converted(raw, dtype):
    """A new native-order array of ``raw`` (as stored) in one allocation: bfloat16 (read as uint16) as float32, bool."""
    if dtype == "bfloat16":
        wide = raw.astype(np.uint32, order="C")
        wide <<= 16
        return wide.view(np.float32)
    return raw != 0 if dtype == "bool" else raw.astype(raw.dtype.newbyteorder("="), order="C")


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {type(value).__name__}")
    if not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"tensor {what} must hold non-negative ints, got {value!r}")
    return tuple(value)


# -- The restricted unpickler -------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, reader, allow_persistent):
        super().__init__(file, encoding="utf-8")
        self._reader = reader
        self._allow_persistent = allow_persistent
        # A fresh class per load: a hostile pickle may mutate the class object
        # it is handed (BUILD), and that must not leak into later loads.
        self._ns_class = type("Namespace", (CheckpointNamespace,), {"__setstate__": _namespace_setstate})
        funcs = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            **{("builtins", t.__name__): t for t in (set, frozenset, slice, complex)},
            ("_codecs", "encode"): self._codecs_encode,
            **{("torch._utils", n): getattr(self, n) for n in _TENSOR_BUILDERS},
            ("torch._tensor", "_rebuild_from_type"): self._rebuild_from_type,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type,
            ("torch._utils", "_rebuild_from_type_v2"): self._rebuild_from_type,
            ("torch", "Size"): self._size,
            ("torch", "device"): self._device,
            ("argparse", "Namespace"): self._ns_class,
            ("numpy", "dtype"): self._np_dtype,
            **{(m, "scalar"): self._np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
        }
        self._globals = {
            key: value if isinstance(value, type) else _Callable(value, f"{key[0]}.{key[1]}")
            for key, value in funcs.items()
        } | _MARKER_GLOBALS
        self._tensor_builders = tuple(self._globals[("torch._utils", n)] for n in _TENSOR_BUILDERS)

    # -- pickle hooks -------------------------------------------------------

    def find_class(self, module, name):
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        if (module in ("torch", "torch.cuda")) and name in _QUANTIZED_STORAGES:
            raise CheckpointError(
                f"{self._reader.path}: quantized storage '{module}.{name}' is not supported ({_ACCEPTED})"
            )
        found = self._globals.get((module, name))
        if found is not None:
            return found
        shown = f"{module}.{name}'"
        py3 = _compat_pickle.NAME_MAPPING.get((module, name))
        if py3 is None and module in _compat_pickle.IMPORT_MAPPING:
            py3 = (_compat_pickle.IMPORT_MAPPING[module], name)
        if py3 is not None:
            shown += f" (Python 3 name '{py3[0]}.{py3[1]}')"
        raise CheckpointError(
            f"{self._reader.path}: refusing to load forbidden global '{shown} "
            f"(nothing from the file was executed); {_ACCEPTED}"
        )

    def persistent_load(self, pid):
        if not self._allow_persistent:
            raise CheckpointError(f"{self._reader.path}: unexpected persistent id in a header pickle")
        return self._reader.persistent_load(pid)

    # -- harmless replacements for the allowed globals -----------------------

    @staticmethod
    def _codecs_encode(text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
            raise CheckpointError(f"unsupported _codecs.encode call with encoding {encoding!r}")
        return text.encode(encoding, "strict")

    @staticmethod
    def _size(dims=()):
        return _int_tuple(tuple(dims) if isinstance(dims, (tuple, list)) else dims, "size")

    @staticmethod
    def _device(kind, index=None):
        if not isinstance(kind, str) or not (index is None or type(index) is int):
            raise CheckpointError("unexpected arguments to torch.device")
        return kind if index is None else f"{kind}:{index}"

    def _make_tensor(self, storage, offset, size, stride, dtype, metadata):
        if type(storage) is not _StorageRef:
            raise CheckpointError(
                f"{self._reader.path}: a tensor is rebuilt from a {type(storage).__name__}, not a storage"
            )
        if type(offset) is not int or offset < 0:
            raise CheckpointError(f"{self._reader.path}: bad tensor storage offset {offset!r}")
        size = _int_tuple(size, "size")
        stride = _int_tuple(stride, "stride")
        if len(size) != len(stride):
            raise CheckpointError(f"{self._reader.path}: tensor size {size} and stride {stride} differ in length")
        if dtype is None:
            if storage.untyped:
                raise CheckpointError(f"{self._reader.path}: tensor over an untyped storage has no dtype")
            dtype_name = storage.dtype
        else:
            if type(dtype) is not _Marker or dtype.kind != "dtype":
                raise CheckpointError(f"{self._reader.path}: bad tensor dtype {dtype!r}")
            dtype_name = dtype.value
        if metadata is not None and not isinstance(metadata, dict):
            raise CheckpointError(f"{self._reader.path}: bad tensor metadata {metadata!r}")
        storage.root.pending += 1
        return _TensorRef(storage, offset, size, stride, dtype_name, dict(metadata or {}))

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._make_tensor(storage, storage_offset, size, stride, None, None)

    def _rebuild_tensor_v2(
        self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
    ):
        return self._make_tensor(storage, storage_offset, size, stride, None, metadata)

    def _rebuild_tensor_v3(
        self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
    ):
        return self._make_tensor(storage, storage_offset, size, stride, dtype, metadata)

    def _rebuild_parameter(self, data, requires_grad=True, backward_hooks=None):
        if type(data) is not _TensorRef:
            raise CheckpointError(f"{self._reader.path}: a Parameter wraps a {type(data).__name__}, not a tensor")
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data)

    def _rebuild_from_type(self, func, new_type, args, state=None):
        builder = any(func is f for f in self._tensor_builders)
        if not builder or new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE) or not isinstance(args, tuple):
            raise CheckpointError(f"{self._reader.path}: tensor subclass {new_type!r} is not supported; {_ACCEPTED}")
        return func(*args)

    @staticmethod
    def _np_dtype(code, align=False, copy=True):
        if code not in _NUMPY_SCALAR_CODES:
            raise CheckpointError(f"numpy dtype {code!r} is not accepted (only numeric scalars)")
        return _NumpyDType(code)

    @staticmethod
    def _np_scalar(dtype, data=None):
        if type(dtype) is not _NumpyDType or not isinstance(data, bytes):
            raise CheckpointError("unexpected arguments to numpy scalar reconstruction")
        np_dtype = np.dtype(dtype.order + dtype.code)
        if len(data) != np_dtype.itemsize:
            raise CheckpointError("numpy scalar has the wrong number of bytes")
        return np.frombuffer(data, dtype=np_dtype).astype(np_dtype.newbyteorder("="))[0]


def _namespace_setstate(self, state):
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
        if slotstate:
            raise CheckpointError("unexpected slot state for argparse.Namespace")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError("unexpected state for argparse.Namespace")
    self.__dict__.update(state)


# -- Container readers --------------------------------------------------------


class _Reader:
    def __init__(self, path, max_bytes=MAX_CHECKPOINT_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self.roots = {}
        self.views = {}
        self.big_endian = False
        self.legacy = False

    # storage records ---------------------------------------------------------

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r:.80}; {_ACCEPTED}")
        # The legacy format adds a sixth field: the view (or None) of the storage.
        if len(pid) != (6 if self.legacy else 5):
            raise CheckpointError(f"{self.path}: malformed storage reference {pid!r:.80}")
        _, stype, key, location, numel, *view = pid
        view_metadata = view[0] if view else None
        if type(stype) is not _Marker or stype.kind != "storage":
            raise CheckpointError(f"{self.path}: unknown storage type {stype!r:.80}; {_ACCEPTED}")
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise CheckpointError(f"{self.path}: malformed storage reference {pid!r:.80}")
        untyped = stype is _UNTYPED_STORAGE
        dtype = "uint8" if untyped else stype.value
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _StorageRoot(key, dtype, numel)
        elif root.dtype != dtype or root.numel != numel:
            raise CheckpointError(f"{self.path}: storage '{key}' is referenced with different types or sizes")
        if view_metadata is None:
            cache_key, offset, view_size = ("", key), 0, numel
        else:
            # Old torch: a storage that is a slice of another (view_key, offset, size).
            if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
                raise CheckpointError(f"{self.path}: malformed storage view {view_metadata!r:.80}")
            view_key, offset, view_size = view_metadata
            ints = type(offset) is int and type(view_size) is int
            if not isinstance(view_key, str) or not ints or not 0 <= offset <= offset + view_size <= numel:
                raise CheckpointError(f"{self.path}: storage view {view_metadata!r:.80} lies outside its storage")
            cache_key = ("view", view_key)
        ref = self.views.get(cache_key)
        if ref is None:
            item = _DTYPE_SPECS[dtype][1]
            ref = self.views[cache_key] = _StorageRef(root, offset * item, view_size * item, dtype, untyped)
        return ref

    def check_total(self):
        """Refuses tensors declared beyond ``max_bytes`` in all, before any is read."""
        total = sum(root.nbytes for root in self.roots.values())
        if total > self.max_bytes:
            raise CheckpointError(
                f"{self.path}: the checkpoint declares {total:,} bytes of tensors, more than the {self.max_bytes:,} "
                f"allowed (weights, EMA and optimizer state of the largest model, {LARGEST_MODEL_WEIGHTS:,} "
                f"weights, twice over); nothing was inflated. {_RAISE_LIMIT}"
            )

    def check_arrays(self, obj):
        """Refuses a tensor outside its storage, or arrays beyond the limits, before any record is inflated.

        Counted as ``finalize`` builds them: each tensor or bare storage an array of its own (a view
        of a shared storage in full, a stride-0 expansion at its expanded size), none holding more
        elements than the largest model has weights (more under a raised ``max_bytes``).
        """
        max_numel = max(LARGEST_MODEL_WEIGHTS, self.max_bytes * LARGEST_MODEL_WEIGHTS // MAX_CHECKPOINT_BYTES)
        total, arrays, largest, seen, stack = 0, 0, (-1, ""), set(), [(obj, "")]
        while stack:
            o, name = stack.pop()
            if id(o) in seen:  # every id stays alive in ``obj``: none is reused during the walk
                continue
            seen.add(id(o))
            if type(o) in (_TensorRef, _StorageRef):
                what = f"{'tensor' if type(o) is _TensorRef else 'storage'} '{name}'"
                nbytes = self.array_bytes(o, what, max_numel)
                total, arrays, largest = total + nbytes, arrays + 1, max(largest, (nbytes, what))
            elif isinstance(o, (dict, CheckpointNamespace, list, tuple, slice)):
                items = (dict.items(o) if isinstance(o, dict) else vars(o).items() if isinstance(o, CheckpointNamespace)
                         else enumerate((o.start, o.stop, o.step) if type(o) is slice else o))
                stack.extend((v, f"{name}.{k}" if name else str(k)) for k, v in reversed(list(items)))
        if total > self.max_bytes:
            raise CheckpointError(
                f"{self.path}: its tensors would become {total:,} bytes of arrays ({arrays} arrays, the largest "
                f"{largest[1]} of {largest[0]:,} bytes; a view of a shared storage or a stride-0 expansion is an "
                f"array of its own), more than the {self.max_bytes:,} allowed; nothing was inflated. {_RAISE_LIMIT}"
            )

    def array_bytes(self, ref, what, max_numel):
        if ref.dtype not in _DTYPE_SPECS:
            raise CheckpointError(f"{self.path}: {what} of dtype torch.{ref.dtype} cannot be converted to numpy")
        item = _DTYPE_SPECS[ref.dtype][1]
        numel = ref.nbytes // item if type(ref) is _StorageRef else math.prod(ref.size)
        if type(ref) is _TensorRef and numel:
            count = ref.storage.nbytes // item
            if (extent := ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))) >= count:
                raise CheckpointError(
                    f"{self.path}: {what} (offset {ref.offset}, size {ref.size}, stride {ref.stride}) reaches "
                    f"element {extent:,} but its storage '{ref.storage.root.key}' holds only {count:,} elements"
                )
        if numel > max_numel:
            raise CheckpointError(
                f"{self.path}: {what} would be an array of {numel:,} elements, more than the {max_numel:,} one tensor "
                f"may hold (the {LARGEST_MODEL_WEIGHTS:,} weights of the largest model, more under a raised "
                f"max_bytes); nothing was inflated. {_RAISE_LIMIT}"
            )
        return numel * (4 if ref.dtype == "bfloat16" else item)  # bfloat16 is widened to float32

    def storage_bytes(self, root):
        if root.data is None:
            root.data = self.fetch(root)
        return root.data

    def fetch(self, root):  # pragma: no cover - overridden
        raise CheckpointError(f"{self.path}: storage '{root.key}' has no data")

    # tensors ---------------------------------------------------------------

    def elements(self, storage, dtype):
        """The elements of a storage window read as ``dtype`` in the file's byte order (uncopied)."""
        code, item = _DTYPE_SPECS[dtype]
        raw_dtype = np.dtype((">" if self.big_endian else "<") + code)
        data = self.storage_bytes(storage.root)
        return np.frombuffer(data, dtype=raw_dtype, count=storage.nbytes // item, offset=storage.byte_offset)

    def materialize(self, ref):
        """A new array of ``ref`` (its bounds and size checked by ``check_arrays``), made in one allocation."""
        storage = ref.storage
        base = self.elements(storage, ref.dtype)
        strides = tuple(s * base.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(base[ref.offset:], ref.size, strides, writeable=False) \
            if math.prod(ref.size) else np.zeros(ref.size, dtype=base.dtype)
        arr = _converted(view, ref.dtype)  # a copy, an expansion too: what the reader hands out is what it counted
        if ref.metadata.get("neg"):
            np.negative(arr, out=arr)
        if ref.metadata.get("conj"):
            np.conjugate(arr, out=arr)
        storage.root.pending -= 1
        if storage.root.pending <= 0 and not self.legacy:
            storage.root.data = None  # free the raw bytes early (re-read on demand)
        return arr

    def storage_array(self, ref):
        return _converted(self.elements(ref, ref.dtype), ref.dtype)

    # post-pass -------------------------------------------------------------

    def finalize(self, obj):
        memo = {}
        scalars = (str, bytes, bytearray, int, float, bool, complex, type(None))

        def conv(o):
            t = type(o)
            if t in scalars:
                return o
            key = id(o)
            if key in memo:
                return memo[key]
            if t is _TensorRef:
                r = self.materialize(o)
            elif t is dict or t is collections.OrderedDict:
                r = memo[key] = {}
                for k, v in dict.items(o):
                    r[conv(k)] = conv(v)
            elif t is list:
                r = memo[key] = []
                r.extend(conv(v) for v in o)
            elif t is tuple:
                r = tuple(conv(v) for v in o)
            elif t is set or t is frozenset:
                r = t(conv(v) for v in o)
            elif t is slice:
                r = slice(conv(o.start), conv(o.stop), conv(o.step))
            elif isinstance(o, CheckpointNamespace) and t.__mro__[1] is CheckpointNamespace:
                r = memo[key] = CheckpointNamespace()
                for k, v in list(vars(o).items()):
                    r.__dict__[k] = conv(v)
            elif t is _StorageRef:
                r = self.storage_array(o)
            elif t is _Marker:
                r = o.name
            elif isinstance(o, np.generic) and o.dtype.kind in "biufc":
                r = o
            elif t is _Callable or isinstance(o, type):
                raise CheckpointError(
                    f"{self.path}: a bare reference to '{o!r}' appears as data, not a call; {_ACCEPTED}"
                )
            else:
                raise CheckpointError(
                    f"{self.path}: unexpected {t.__name__} object in the checkpoint data; {_ACCEPTED}"
                )
            memo[key] = r
            return r

        return conv(obj)


class _ZipReader(_Reader):
    def __init__(self, path, zf, fh, max_bytes=MAX_CHECKPOINT_BYTES):
        super().__init__(path, max_bytes)
        self.zf, self.fh, self.file_size = zf, fh, os.fstat(fh.fileno()).st_size
        names = zf.namelist()
        prefixes = sorted({n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1})
        if not prefixes:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise CheckpointError(
                f"{path}: this zip archive is not a PyTorch checkpoint (no '<name>/data.pkl' record; "
                f"records: {shown or 'none'}); {_ACCEPTED}"
            )
        if len(prefixes) > 1:
            raise CheckpointError(f"{path}: zip archive holds several checkpoints ({', '.join(prefixes)})")
        self.prefix = prefixes[0]
        order_name = f"{self.prefix}/byteorder"
        if order_name in names:
            order = bytes(self.read_record(order_name, _MAX_BYTEORDER_BYTES, "a byteorder record").strip())
            if order not in (b"little", b"big"):
                raise CheckpointError(f"{path}: unknown byteorder record {order[:20]!r} (expected little or big)")
            self.big_endian = order == b"big"

    def read_record(self, name, limit, what):
        """The inflated bytes of record ``name``, refused unheard when it declares more than ``limit``."""
        info = self.zf.getinfo(name)
        if info.file_size > limit:
            raise CheckpointError(
                f"{self.path}: record '{name}' inflates to {info.file_size:,} bytes ({info.compress_size:,} in the "
                f"file), more than the {limit:,} {what} may hold; nothing was inflated"
            )
        return self.inflate(info)

    def inflate(self, info):
        """Record ``info``'s bytes, inflated through a decompressor capped at the size its header declares.

        ``zipfile`` inflates a whole stream before cutting it at that size (1 GiB for a header saying
        1 KiB); here a stream giving one byte more, or fewer, or failing its CRC, is refused.
        """
        where, declared = f"{self.path}: record '{info.filename}'", info.file_size
        deflated = info.compress_type == zipfile.ZIP_DEFLATED
        if not deflated and info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            raise CheckpointError(f"{where} is encrypted or compressed with method {info.compress_type} "
                                  "(torch.save stores its records; stored and deflated ones are read)")
        self.fh.seek(info.header_offset)
        local = self.fh.read(30)
        start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30])) if local[:4] == b"PK\x03\x04" else -1
        if start < 0 or start + info.compress_size > self.file_size:
            raise CheckpointError(f"{where} is truncated or its local header is damaged")
        if not deflated and info.compress_size != declared:
            raise CheckpointError(f"{where} stores {info.compress_size:,} bytes, its zip header declares {declared:,}")
        self.fh.seek(start)
        inflater, out, done, left, tail = zlib.decompressobj(-15), bytearray(declared), 0, info.compress_size, b""
        while not (deflated and inflater.eof):
            if not tail and left:
                tail = self.fh.read(min(left, _CHUNK))
                left = left - len(tail) if tail else 0  # cut short (the file changed): refused below
            if deflated:
                piece, tail = inflater.decompress(tail, min(_CHUNK, declared - done + 1)), inflater.unconsumed_tail
            else:
                piece, tail = tail, b""
            if done + len(piece) > declared:
                raise CheckpointError(f"{where} inflates to more than the {declared:,} bytes its zip header declares")
            out[done:done + len(piece)] = piece
            done += len(piece)
            if not (piece or tail or left):
                break
        if done < declared:
            raise CheckpointError(f"{where} inflates to only {done:,} of the {declared:,} bytes its header declares")
        if deflated and not inflater.eof or zlib.crc32(out) != info.CRC:
            raise CheckpointError(f"{where} is damaged (its deflate stream is cut short or it fails its CRC check)")
        return out

    def storage_info(self, root):
        """The zip entry of ``root``, checked: present, and declaring exactly the bytes the pickle gave it."""
        name = f"{self.prefix}/data/{root.key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: storage record '{name}' is missing from the archive") from None
        if info.file_size != root.nbytes:
            raise CheckpointError(
                f"{self.path}: storage record '{name}' inflates to {info.file_size:,} bytes, but the checkpoint "
                f"declares {root.nbytes:,} bytes for it; nothing was inflated"
            )
        return info

    def load(self):
        data = self.read_record(f"{self.prefix}/data.pkl", MAX_PICKLE_BYTES, "the object pickle")
        obj = _SafeUnpickler(io.BytesIO(data), self, allow_persistent=True).load()
        del data
        # Every size is checked before the first record is inflated.
        self.check_total()
        self.check_arrays(obj)
        for root in self.roots.values():
            self.storage_info(root)
        return self.finalize(obj)

    def fetch(self, root):
        return self.inflate(self.storage_info(root))


class _LegacyReader(_Reader):
    def __init__(self, path, fh, max_bytes=MAX_CHECKPOINT_BYTES):
        super().__init__(path, max_bytes)
        self.fh = fh
        self.legacy = True

    def _header_pickle(self, what):
        try:
            return _SafeUnpickler(self.fh, self, allow_persistent=False).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"{self.path}: not a PyTorch checkpoint (could not read the legacy {what}: {exc}); {_ACCEPTED}"
            ) from None

    def load(self):
        magic = self._header_pickle("magic number")
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise CheckpointError(
                f"{self.path}: not a PyTorch checkpoint (a pickle without the torch.save magic number); {_ACCEPTED}"
            )
        protocol = self._header_pickle("protocol version")
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{self.path}: unsupported legacy protocol version {protocol!r:.40}")
        sys_info = self._header_pickle("system info")
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(f"{self.path}: legacy checkpoints written on big-endian machines are not supported")
        obj = _SafeUnpickler(self.fh, self, allow_persistent=True).load()
        keys = _SafeUnpickler(self.fh, self, allow_persistent=False).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(f"{self.path}: malformed legacy storage key list")
        self.check_total()
        self.check_arrays(obj)
        remaining = os.fstat(self.fh.fileno()).st_size - self.fh.tell()
        for key in keys:
            root = self.roots.get(key)
            if root is None:
                raise CheckpointError(f"{self.path}: raw storage '{key}' is not referenced by the checkpoint")
            header = self.fh.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{self.path}: file is truncated (storage '{key}' is missing)")
            (numel,) = struct.unpack("<q", header)
            if numel != root.numel:
                raise CheckpointError(
                    f"{self.path}: raw storage '{key}' has {numel} elements, the checkpoint expects {root.numel}"
                )
            remaining -= 8
            # Checked against what is left first: a cut file must not make read() allocate the declared size.
            if root.nbytes > remaining or len(data := self.fh.read(root.nbytes)) != root.nbytes:
                raise CheckpointError(f"{self.path}: file is truncated (storage '{key}' is cut short)")
            remaining -= root.nbytes
            root.data = data
        missing = [k for k, r in self.roots.items() if r.data is None]
        if missing:
            raise CheckpointError(f"{self.path}: file is truncated (no data for storage(s) {missing[:5]})")
        return self.finalize(obj)


# -- Public API ---------------------------------------------------------------

ALLOWED_GLOBALS = frozenset(
    f"{m}.{n}" for (m, n) in _SafeUnpickler(io.BytesIO(b""), _Reader("<none>"), False)._globals
)


def read_checkpoint(path, max_bytes=MAX_CHECKPOINT_BYTES):
    """Read a ``torch.save`` file safely, returning plain Python / numpy objects.

    Raises :class:`CheckpointError` for anything that is not such a file, is
    damaged, declares more than ``max_bytes`` of tensors or would build more than
    ``max_bytes`` of arrays (``MAX_CHECKPOINT_BYTES``: checked before anything is
    inflated; reading then holds at most about twice ``max_bytes``), has a record
    inflating to other than its zip header declares, or references a global outside
    :data:`ALLOWED_GLOBALS` (in which case nothing from the file has been
    executed).  A missing path raises :class:`CheckpointNotFoundError` (a
    ``CheckpointError`` and a ``FileNotFoundError``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
            if not head:
                raise CheckpointError(f"{path}: the file is empty, not a PyTorch checkpoint")
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                fh.seek(0)
                try:
                    zf = zipfile.ZipFile(fh)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
                    raise CheckpointError(f"{path}: truncated or corrupt zip checkpoint ({exc}); {_ACCEPTED}") from None
                with zf:
                    return _ZipReader(path, zf, fh, max_bytes).load()
            if head[:1] == b"\x80":
                fh.seek(0)
                return _LegacyReader(path, fh, max_bytes).load()
            if head[257:262] == b"ustar":
                raise CheckpointError(
                    f"{path}: a tar archive (the pre-0.4 torch.save format is not supported); {_ACCEPTED}"
                )
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (starts with {head[:8]!r}, neither a zip archive "
                f"nor a pickle); {_ACCEPTED}"
            )
    except CheckpointError as exc:
        if path in str(exc):
            raise
        raise CheckpointError(f"{path}: {exc}") from None
    except (MemoryError, RecursionError) as exc:
        raise CheckpointError(f"{path}: checkpoint is too large or too deeply nested to read ({type(exc).__name__})") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({type(exc).__name__}: {exc}); {_ACCEPTED}"
        ) from None


# The entries a checkpoint may keep its weights under, in the order ``which=None`` tries them:
# timm's EMA and raw weights, a generic "model", and "net" (the authors' transfer_learning.py,
# which saves {'net': state_dict, 'acc': float, 'epoch': int} for the CIFAR fine-tunes).
_SOURCES = ("state_dict_ema", "state_dict", "model", "net")
# Scalars of a checkpoint worth reporting beside its weights.
_INFO_KEYS = ("arch", "epoch", "acc")


def _quoted(names, last="or"):
    """'a', 'b' or 'c'."""
    names = [repr(n) for n in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


# What torch.nn.DataParallel puts before every key of the model it wraps (the authors trained with it).
DATA_PARALLEL_PREFIX = "module."


def normalize_state_dict(state_dict, where="state dict"):
    """``state_dict`` with DataParallel's ``module.`` prefix taken off its keys, as a new dict.

    The one place the prefix is known: ``extract_state_dict`` applies it to every checkpoint it
    reads, ``keras_t2t.detect_variant`` / ``keras_t2t.weights.load_state_dict`` to a state dict
    handed to them. A key that is not a string, or a name present both with and without the
    prefix, is a ``CheckpointError`` naming ``where``.
    """
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: state dict key {key!r} is not a string")
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        if name in out:
            raise CheckpointError(
                f"{where}: key '{name}' appears both with and without the '{DATA_PARALLEL_PREFIX}' prefix"
            )
        out[name] = value
    return out


def _as_state_dict(mapping, where):
    for key, value in mapping.items():
        if isinstance(key, str) and not isinstance(value, np.ndarray):
            raise CheckpointError(f"{where}: state dict entry '{key}' is a {type(value).__name__}, not a tensor")
    return normalize_state_dict(mapping, where)


def extract_state_dict(obj, prefer_ema=True, which=None):
    """Pick the weights out of a read checkpoint.

    Returns ``(state_dict, source_key)`` where ``state_dict`` maps parameter
    names (a leading ``module.`` stripped) to numpy arrays and ``source_key`` is
    the entry used: ``'state_dict_ema'``, ``'state_dict'``, ``'model'``, ``'net'``
    (tried in that order; ``prefer_ema=False`` skips the first) or ``'bare'``
    (the checkpoint is the state dict itself). ``which`` forces one of those entries.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint holds a {type(obj).__name__}, expected a dict (a state dict or a training checkpoint)"
        )
    keys_present = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
    if which is not None:
        if which not in _SOURCES + ("bare",):
            raise CheckpointError(f"which={which!r} is not one of {_quoted(_SOURCES + ('bare',))}")
        if which == "bare":
            return _as_state_dict(obj, "checkpoint"), "bare"
        if which not in obj or not isinstance(obj[which], Mapping):
            raise CheckpointError(f"checkpoint has no {which!r} state dict; keys present: {keys_present}")
        return _as_state_dict(obj[which], which), which
    order = _SOURCES if prefer_ema else _SOURCES[1:]
    for name in order:
        if isinstance(obj.get(name), Mapping) and obj[name]:
            return _as_state_dict(obj[name], name), name
    if obj and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return _as_state_dict(obj, "checkpoint"), "bare"
    raise CheckpointError(
        f"checkpoint has no {_quoted(_SOURCES)} entry and is not a flat "
        f"mapping of names to tensors; keys present: {keys_present}"
    )


def load_state_dict_file(path, prefer_ema=True, which=None, max_bytes=MAX_CHECKPOINT_BYTES):
    """Read ``path`` and return ``(state_dict, info)`` (``max_bytes``: see ``read_checkpoint``).

    ``info`` holds ``'source_key'`` (the entry used, see ``extract_state_dict``) and,
    when the checkpoint has them, ``'arch'``, ``'epoch'`` and ``'acc'`` (the
    accuracy the authors' transfer-learning script saved with its weights).
    """
    obj = read_checkpoint(path, max_bytes=max_bytes)
    try:
        state_dict, source = extract_state_dict(obj, prefer_ema=prefer_ema, which=which)
    except CheckpointError as exc:
        raise CheckpointError(f"{os.fspath(path)}: {exc}") from None
    info = {"source_key": source}
    if isinstance(obj, Mapping) and source != "bare":
        info.update({key: obj[key] for key in _INFO_KEYS if key in obj})
    return state_dict, info
