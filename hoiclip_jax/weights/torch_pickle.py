"""Reads PyTorch `.pth` checkpoints into numpy arrays without torch, and without running their code.

A `.pth` written by `torch.save` is a pickle whose tensors point at raw storages kept outside it:
- zip format (torch >= 1.6, the default): `<folder>/data.pkl` plus one member
  `<folder>/data/<key>` of raw bytes per storage, `<folder>/byteorder` ('little' when absent);
- legacy format (torch < 1.6, `_use_new_zipfile_serialization=False`, e.g. the official DETR
  checkpoints of 2020): consecutive pickles (magic number, protocol version, sys info, the object,
  the sorted storage keys), then for each key an int64 element count and the storage's bytes.

The object pickle is read by a restricted unpickler: `find_class` resolves only the names in
`_ALLOWED` (torch's tensor rebuild functions, its storage types, a few plain containers, numpy
scalars, and `argparse.Namespace` mapped to an inert stand-in); anything else raises
`UnsafePickleError` naming the file and the class, before it can be called. Tensors come back as
`TensorRef`s (storage, offset, shape, stride) and are read on demand, so the unused parts of a
checkpoint (optimizer moments) cost nothing.
"""
import collections
import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from hoiclip_jax.weights.torch_unpickler import (PthFormatError, RestrictedUnpickler, TensorRef,
                                                UnsafePickleError)


LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class _ZipSource:
    """Storage bytes of a zip-format checkpoint: `<folder>/data/<key>`.

    The archive stays open between reads (parsing the directory of a ~900-member zip for every
    tensor was most of the load time) until `close()`; a later read opens it again.
    """

    def __init__(self, path: str, folder: str, byteorder: str):
        self.path, self.folder, self.byteorder = path, folder, byteorder
        self._archive = None

    def read(self, key: str, dtype: np.dtype) -> np.ndarray:
        if self._archive is None:
            self._archive = zipfile.ZipFile(self.path)
        data = self._archive.read(f"{self.folder}/data/{key}")
        return _from_bytes(data, dtype, self.byteorder, f"{self.path}: storage {key}")

    def close(self):
        if self._archive is not None:
            self._archive.close()
            self._archive = None


class _LegacySource:
    """Storage bytes of a legacy checkpoint: (byte offset, element count) per key."""

    def __init__(self, path: str, byteorder: str):
        self.path, self.byteorder = path, byteorder
        self.blocks: dict[str, tuple[int, int]] = {}

    def close(self):
        pass  # every read opens and closes the file

    def read(self, key: str, dtype: np.dtype) -> np.ndarray:
        start, count = self.blocks[key]
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(count * dtype.itemsize)
        return _from_bytes(data, dtype, self.byteorder, f"{self.path}: storage {key}")


def _from_bytes(data: bytes, dtype: np.dtype, byteorder: str, where: str) -> np.ndarray:
    if len(data) % dtype.itemsize:
        raise PthFormatError(f"{where}: {len(data)} bytes is not a multiple of {dtype} "
                             f"({dtype.itemsize} bytes)")
    if byteorder == "big" and dtype.itemsize > 1:
        return np.frombuffer(data, dtype.newbyteorder(">")).astype(dtype)
    return np.frombuffer(data, dtype)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            hint = (" (a TorchScript archive? save a state_dict instead)"
                    if any(n.endswith("/constants.pkl") for n in names) else "")
            raise PthFormatError(f"{path}: zip without exactly one '<folder>/data.pkl' "
                                 f"(found {pickles}){hint}")
        folder = pickles[0].split("/")[0]
        byteorder = "little"
        if f"{folder}/byteorder" in names:
            byteorder = archive.read(f"{folder}/byteorder").decode().strip()
        if byteorder not in ("little", "big"):
            raise PthFormatError(f"{path}: unknown byteorder record {byteorder!r}")
        source = _ZipSource(path, folder, byteorder)
        with archive.open(pickles[0]) as f:
            return RestrictedUnpickler(f, path, source).load(), source


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        header = RestrictedUnpickler(f, path, None)
        try:
            magic = header.load()
        except UnsafePickleError:
            raise
        except Exception as e:  # any garbage: a pickle parser raises many kinds of errors
            raise PthFormatError(f"{path}: neither a zip nor a legacy PyTorch checkpoint "
                                 f"({e})") from e
        if magic != LEGACY_MAGIC_NUMBER:
            raise PthFormatError(f"{path}: legacy magic number {magic!r:.40} != "
                                 f"{LEGACY_MAGIC_NUMBER:#x} (a pre-0.4 tar checkpoint or not "
                                 "a PyTorch file)")
        version = header.load()
        if version != LEGACY_PROTOCOL_VERSION:
            raise PthFormatError(f"{path}: legacy protocol version {version!r}, expected "
                                 f"{LEGACY_PROTOCOL_VERSION}")
        sys_info = header.load()
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        source = _LegacySource(path, byteorder)
        unpickler = RestrictedUnpickler(f, path, source)
        obj = unpickler.load()
        keys = RestrictedUnpickler(f, path, None).load()
        _index_legacy_blocks(f, path, keys, unpickler.storages, source)
    return obj, source


def _index_legacy_blocks(f, path: str, keys, storages: dict, source: _LegacySource):
    """Records where each storage's bytes start: int64 element count, then the raw elements."""
    size = os.fstat(f.fileno()).st_size
    for key in keys:
        if key not in storages:
            raise PthFormatError(f"{path}: storage key {key!r} listed but never referenced")
        (count,) = struct.unpack("<q" if source.byteorder == "little" else ">q", f.read(8))
        start = f.tell()
        end = start + count * storages[key].dtype.itemsize
        if count < 0 or end > size:
            raise PthFormatError(f"{path}: storage {key} ({count} x {storages[key].dtype}) runs "
                                 f"past the end of the file ({size} bytes)")
        source.blocks[key] = (start, count)
        f.seek(end)
    missing = set(storages) - set(source.blocks)
    if missing:
        raise PthFormatError(f"{path}: storages {sorted(missing)} have no data")


def load_pth(path: str, lazy: bool = False) -> Any:
    """Reads a `.pth` file (zip or legacy format) without torch.

    Args:
      path: the checkpoint.
      lazy: leave tensors as `TensorRef`s (call `.numpy()` to read one).

    Returns:
      The pickled object with tensors as numpy arrays (or TensorRefs), `argparse.Namespace` as
      `PickledNamespace`, other values as plain Python objects.

    Raises:
      UnsafePickleError: the pickle names any other global (the message names file and class).
      PthFormatError: the file is not a checkpoint this reader understands, or is corrupt.
    """
    obj, source = _load(path)
    if lazy:
        return obj
    obj = materialize(obj)
    source.close()
    return obj


def _load(path: str):
    """(object with TensorRefs, its storage source) of a zip or legacy checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)


def materialize(obj: Any, cache: dict | None = None) -> Any:
    """Replaces every TensorRef inside dicts, lists and tuples by its numpy array."""
    cache = {} if cache is None else cache
    if isinstance(obj, TensorRef):
        return obj.numpy(cache)
    if isinstance(obj, Mapping):
        items = [(k, materialize(v, cache)) for k, v in obj.items()]
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) \
            else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(v, cache) for v in obj)
    return obj


def load_state_dict(path: str, key: str = "model") -> tuple[dict[str, np.ndarray], dict]:
    """The state dict of a checkpoint as numpy arrays, and the checkpoint's other entries.

    Accepts `{key: state_dict, ...}` (training checkpoints: the rest, e.g. 'optimizer', 'epoch',
    'args', is returned unread, tensors as TensorRefs) or a bare state dict.

    Returns:
      (state_dict: {name: array} in file order, extras: {entry: value}).
    """
    obj, source = _load(path)
    if not isinstance(obj, Mapping):
        raise PthFormatError(f"{path}: top-level {type(obj).__name__}, expected a dict")
    if key in obj and isinstance(obj[key], Mapping):
        state, extras = obj[key], {k: v for k, v in obj.items() if k != key}
    elif obj and all(isinstance(v, TensorRef) for v in obj.values()):
        state, extras = obj, {}
    else:
        raise PthFormatError(f"{path}: no state dict: neither a '{key}' entry nor a flat "
                             f"name -> tensor dict (top-level keys {list(obj)[:10]})")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, TensorRef))]
    if bad:
        raise PthFormatError(f"{path}: state dict entries that are not name -> tensor: {bad[:5]}")
    cache = {}
    arrays = {k: v.numpy(cache) for k, v in state.items()}
    source.close()  # the extras' tensors, if read later, open the file again
    return arrays, dict(extras)
