"""The tensors of a PyTorch archive (torch.save checkpoint or TorchScript module), read without torch.

Both formats are zip files with one top folder: `<top>/data.pkl` is a pickle
(protocol 2) whose tensors name raw storages kept beside it as
`<top>/data/<key>` (TorchScript archives add `code/` and `constants.pkl`,
which are never read). Everything in the archive is untrusted:

- The pickle is read by a restricted unpickler: `find_class`, the only way a
  pickle reaches Python callables, answers a fixed table (the tensor-rebuild
  functions, OrderedDict, the storage type markers, TorchScript's int-list
  builder) with harmless local stand-ins, and TorchScript module classes
  (`__torch__.*`) with inert records holding their attributes; any other name
  raises UnsafeArchiveError before anything is called.
- Storage keys must be plain names and exist in the zip; a storage's size must
  be its element count times the element size; a tensor's offset, shape and
  strides must stay inside its storage; the pickle and each storage have size
  limits. Violations raise ValueError naming the archive.

`read_tensors` returns the tensors as numpy arrays (copies, C order) under
dotted names, e.g. `net.layers.mixed_3.conv.weight` or
`Mixed_5b.branch1x1.conv.weight`.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np

MAX_PICKLE_BYTES = 16 << 20  # the FID network's data.pkl is 28 KB
MAX_STORAGE_BYTES = 1 << 30
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_SCRIPT_CLASS = re.compile(r"^__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UnsafeArchiveError(ValueError):
    """The pickle asks for something other than tensors and plain containers."""


class StorageType:
    """Stands for torch.FloatStorage and its kin: only the element type matters."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = np.dtype(dtype).newbyteorder("<")  # torch writes little-endian storages

    def __repr__(self) -> str:
        return f"torch.{self.name}"


STORAGE_TYPES = {name: StorageType(name, dtype) for name, dtype in [
    ("FloatStorage", np.float32), ("DoubleStorage", np.float64), ("HalfStorage", np.float16),
    ("LongStorage", np.int64), ("IntStorage", np.int32), ("ShortStorage", np.int16),
    ("CharStorage", np.int8), ("ByteStorage", np.uint8), ("BoolStorage", np.bool_),
]}


class ScriptObject:
    """A TorchScript module instance: its attributes (tensors, sub-modules, ints), nothing callable."""

    type_name = "__torch__"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise UnsafeArchiveError(f"a {self.type_name} object's state is not a dict of named attributes")
        self.attributes = state


_SCRIPT_CLASSES: dict[str, type] = {}


def _script_class(qualified_name: str) -> type:
    # One inert subclass per TorchScript class name, so NEWOBJ can instantiate it; the name is only a label.
    if qualified_name not in _SCRIPT_CLASSES:
        _SCRIPT_CLASSES[qualified_name] = type("ScriptObject", (ScriptObject,), {"type_name": qualified_name})
    return _SCRIPT_CLASSES[qualified_name]


def _check_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UnsafeArchiveError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied, after checking it fits."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise UnsafeArchiveError(f"a tensor must be built on a storage, got {type(storage).__name__}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) or len(size) > 8:
        raise UnsafeArchiveError(f"a tensor's size {size!r} and stride {stride!r} must be tuples of equal length")
    offset = _check_int(offset, "a tensor's storage offset")
    size = tuple(_check_int(value, "a tensor dimension") for value in size)
    stride = tuple(_check_int(value, "a tensor stride") for value in stride)
    hooks = backward_hooks is not None and not (isinstance(backward_hooks, dict) and not backward_hooks)
    if hooks or not isinstance(requires_grad, bool):
        raise UnsafeArchiveError("a tensor with backward hooks or a non-boolean requires_grad")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    if math.prod(size) * storage.itemsize > MAX_STORAGE_BYTES:  # stride 0 can stretch a tiny storage
        raise UnsafeArchiveError(f"a tensor of size {size} is larger than {MAX_STORAGE_BYTES} bytes")
    last = offset + sum((dimension - 1) * step for dimension, step in zip(size, stride))
    if last >= len(storage):
        raise UnsafeArchiveError(f"a tensor of size {size} at offset {offset} with strides {stride} "
                                 f"reaches past its storage of {len(storage)} elements")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[step * storage.itemsize for step in stride], writeable=False)
    # A copy in native byte order (np.ascontiguousarray would turn a 0-d tensor into 1-d).
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C", copy=True)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> np.ndarray:
    """torch._utils._rebuild_parameter: an nn.Parameter is its tensor here."""
    if not isinstance(data, np.ndarray):
        raise UnsafeArchiveError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


def _build_intlist(values: Any) -> list:
    if not isinstance(values, list) or not all(isinstance(value, int) for value in values):
        raise UnsafeArchiveError("build_intlist needs a list of integers")
    return values


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _build_intlist,
    **{("torch", name): storage_type for name, storage_type in STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: "_Archive"):
        super().__init__(io.BytesIO(data))
        self.archive = archive

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if _SCRIPT_CLASS.match(module) and name.isidentifier():
            return _script_class(f"{module}.{name}")
        raise UnsafeArchiveError(f"{self.archive.name}: the pickle asks for {module}.{name}, which is not a tensor "
                                 f"rebuild; refusing to load it")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"{self.archive.name}: unknown persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, count = pid
        if not isinstance(storage_type, StorageType):
            raise UnsafeArchiveError(f"{self.archive.name}: storage of unknown type {storage_type!r}")
        return self.archive.storage(key, storage_type, _check_int(count, "a storage's element count"))


class _Archive:
    """One torch zip archive: its top folder, and its storages read once each."""

    def __init__(self, file: zipfile.ZipFile, name: str):
        self.file = file
        self.name = name
        pickles = [entry for entry in file.namelist() if entry.count("/") == 1 and entry.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{name} is not a PyTorch archive (expected one <folder>/data.pkl, "
                             f"found {len(pickles)})")
        self.top = pickles[0].split("/", 1)[0]
        self._storages: dict[str, np.ndarray] = {}

    def read(self, entry: str, limit: int) -> bytes:
        info = self.file.getinfo(entry)
        if info.file_size > limit:
            raise ValueError(f"{self.name}: {entry} is {info.file_size} bytes, more than the {limit} allowed")
        with self.file.open(info) as stream:
            data = stream.read(limit + 1)
        if len(data) != info.file_size:
            raise ValueError(f"{self.name}: {entry} holds {len(data)} bytes, not the {info.file_size} declared")
        return data

    def storage(self, key: Any, storage_type: StorageType, count: int) -> np.ndarray:
        if not isinstance(key, str) or not _PLAIN_NAME.match(key):
            raise UnsafeArchiveError(f"{self.name}: storage key {str(key)[:80]!r} is not a plain name")
        if key not in self._storages:
            entry = f"{self.top}/data/{key}"
            if entry not in self.file.NameToInfo:
                raise ValueError(f"{self.name}: the pickle names storage {key}, which the archive does not hold")
            expected = count * storage_type.dtype.itemsize
            data = self.read(entry, min(expected, MAX_STORAGE_BYTES))
            if len(data) != expected:
                raise ValueError(f"{self.name}: storage {key} holds {len(data)} bytes, not the {expected} of "
                                 f"{count} {storage_type.dtype} elements")
            self._storages[key] = np.frombuffer(data, storage_type.dtype)
        storage = self._storages[key]
        if storage.dtype != storage_type.dtype or len(storage) != count:
            raise ValueError(f"{self.name}: storage {key} is used with two different types or sizes")
        return storage

    def load(self) -> Any:
        data = self.read(f"{self.top}/data.pkl", MAX_PICKLE_BYTES)
        try:
            return _RestrictedUnpickler(data, self).load()
        except UnsafeArchiveError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as error:
            raise ValueError(f"{self.name}: unreadable pickle ({type(error).__name__}: {error})") from None


def load_archive(source: str | bytes | BinaryIO, name: str | None = None) -> Any:
    """The unpickled object of a torch archive: tensors as numpy arrays, modules as ScriptObjects."""
    name = name or (source if isinstance(source, str) else "the archive")
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with zipfile.ZipFile(opened) as file:
            return _Archive(file, name).load()
    except zipfile.BadZipFile as error:
        raise ValueError(f"{name} is not a zip archive ({error}); expected a PyTorch .pt or .pth file") from None


def flatten_tensors(value: Any, prefix: str = "", _parents: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Every tensor in nested dicts and ScriptObjects, under its dotted path."""
    tensors: dict[str, np.ndarray] = {}
    if isinstance(value, ScriptObject):
        value = getattr(value, "attributes", {})
    if isinstance(value, dict):
        # A pickle can make an object contain itself; real modules nest a few levels deep.
        if id(value) in _parents or len(_parents) > 32:
            raise ValueError(f"tensor {prefix[:-1]!r} is nested in a cycle or more than 32 levels deep")
        for key, item in value.items():
            tensors.update(flatten_tensors(item, f"{prefix}{key}.", _parents + (id(value),)))
    elif isinstance(value, np.ndarray):
        tensors[prefix[:-1]] = value
    return tensors


def read_tensors(source: str | bytes | BinaryIO, name: str | None = None) -> dict[str, np.ndarray]:
    """The named tensors of a torch.save checkpoint (a state dict) or a TorchScript module."""
    return flatten_tensors(load_archive(source, name))
