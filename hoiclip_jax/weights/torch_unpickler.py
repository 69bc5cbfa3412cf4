"""The restricted unpickler of `torch_pickle`: it builds only an allow-list of classes (tensors
as lazy `TensorRef`s into their storages, OrderedDict, numpy scalars, an inert stand-in for
`argparse.Namespace`) and refuses every other global, so a `.pth` cannot run code on load."""
import _compat_pickle
import collections
import dataclasses
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not a tensor, a storage or a plain container."""


class PthFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands, or is inconsistent."""


def _bfloat16():
    """numpy has no bfloat16; ml_dtypes (a jax dependency) provides it."""
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


# torch.<Name>Storage -> numpy dtype (a callable for the lazily imported bfloat16).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}


@dataclasses.dataclass(frozen=True)
class StorageType:
    """What `torch.<name>` resolves to while unpickling: a marker carrying the element dtype."""
    name: str

    @property
    def dtype(self) -> np.dtype:
        kind = _STORAGE_DTYPES[self.name]
        return kind() if kind is _bfloat16 else np.dtype(kind)


@dataclasses.dataclass(frozen=True)
class _Storage:
    """One storage of the checkpoint: `numel` elements of `dtype`, `offset` elements into the
    raw block `key` (the offset is only non-zero for the storage views of very old files)."""
    source: Any = dataclasses.field(repr=False)
    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor of the checkpoint, not yet read: a strided view into a storage (in elements)."""
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    def __repr__(self):
        return f"TensorRef({self.dtype}{list(self.shape)}, storage {self.storage.key})"

    def numpy(self, cache: dict | None = None) -> np.ndarray:
        """The tensor as a fresh, C-contiguous numpy array (shape `self.shape`)."""
        s = self.storage
        _check_view(self, s)
        if cache is not None and s.key in cache:
            flat = cache[s.key]
        else:
            flat = s.source.read(s.key, s.dtype)
            if cache is not None:
                cache[s.key] = flat
        if s.offset + s.numel > flat.size:
            raise PthFormatError(f"{s.source.path}: storage {s.key} holds {flat.size} elements, "
                                 f"the pickle expects {s.offset + s.numel}")
        if 0 in self.shape:
            return np.zeros(self.shape, s.dtype)
        start = flat[s.offset + self.offset:]
        view = np.lib.stride_tricks.as_strided(
                start, self.shape, tuple(st * s.dtype.itemsize for st in self.stride),
                writeable=False)
        return np.array(view, copy=True, order="C")


def _check_view(ref: TensorRef, storage: _Storage):
    """A view must stay inside its storage: as_strided does not check, and would read past it."""
    where = f"{storage.source.path}: tensor on storage {storage.key}"
    if len(ref.shape) != len(ref.stride):
        raise PthFormatError(f"{where}: shape {ref.shape} and stride {ref.stride} differ in rank")
    if ref.offset < 0 or min(ref.shape + ref.stride, default=0) < 0:
        raise PthFormatError(f"{where}: negative offset/size/stride ({ref.offset}, {ref.shape}, "
                             f"{ref.stride})")
    if 0 in ref.shape:
        return
    last = ref.offset + sum((n - 1) * st for n, st in zip(ref.shape, ref.stride))
    if last >= storage.numel:
        raise PthFormatError(f"{where}: view (offset {ref.offset}, shape {ref.shape}, stride "
                             f"{ref.stride}) reaches element {last} of {storage.numel}")


class PickledNamespace:
    """Inert stand-in for `argparse.Namespace` (the training arguments saved in checkpoints)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __repr__(self):
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"PickledNamespace({items})"

    def __eq__(self, other):
        return isinstance(other, PickledNamespace) and vars(self) == vars(other)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> TensorRef:
    """torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride, requires_grad,
    backward_hooks[, metadata]); gradients and hooks do not matter for weights."""
    if not isinstance(storage, _Storage):
        raise PthFormatError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return TensorRef(storage, int(storage_offset), tuple(int(n) for n in size),
                     tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter(_with_state)(data, requires_grad, hooks[, state])."""
    return data


def _numpy_scalar(dtype, data=None):
    """numpy's `multiarray.scalar(dtype, bytes)` for plain (non-object) dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not a plain number")
    return np.frombuffer(data, dtype, count=1)[0]


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,  # lr scheduler milestones
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("argparse", "Namespace"): PickledNamespace,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("torch", name): StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch.storage", name): StorageType(name) for name in ("UntypedStorage",)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED` globals and torch's storage references."""

    def __init__(self, file, path: str, source):
        super().__init__(file)
        self.path, self.source = path, source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        # Protocol-2 pickles name Python 2 modules ('__builtin__'), as pickle itself maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                    f"{self.path}: refusing to load '{module}.{name}': only tensors, storages "
                    "and plain containers are read from checkpoints (no code is run)")
        # A fresh marker per use: a pickle's BUILD opcode could otherwise edit the shared one.
        return StorageType(found.name) if isinstance(found, StorageType) else found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise PthFormatError(f"{self.path}: unknown persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise PthFormatError(f"{self.path}: storage {key!r} of type {storage_type!r}")
        view = pid[5] if len(pid) == 6 else None
        root = self._root(str(key), storage_type.dtype, int(numel))
        if view is None:
            return root
        # Storage views (torch < 0.4 legacy files): (view key, offset, size) in elements.
        _view_key, offset, size = view
        return dataclasses.replace(root, offset=int(offset), numel=int(size))

    def _root(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(self.source, key, dtype, numel)
        elif known.dtype != dtype:
            raise PthFormatError(f"{self.path}: storage {key} read as {known.dtype} and {dtype}")
        return known
