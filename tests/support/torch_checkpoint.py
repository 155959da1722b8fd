"""torch.save's zip format written without torch, for tests of animegan's reader.

torch.save(state_dict) writes `<name>/data.pkl` (pickle protocol 2: an
OrderedDict of `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict())` calls, each storage a persistent id
`('storage', torch.FloatStorage, key, 'cpu', numel)`), one raw
little-endian file per storage under `<name>/data/<key>`, and `<name>/version`.
The pickle is emitted opcode by opcode here because pickling references to
torch's functions needs torch. tests/fixtures/torch_save_small.pth, written
by torch itself, checks that the reader reads the real thing too.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def _tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def tensor_opcodes(key: str, array: np.ndarray) -> bytes:
    storage = _tuple([_string("storage"), _global("torch", _STORAGE_TYPES[array.dtype]), _string(key),
                      _string("cpu"), _int(array.size)])
    strides = [step // array.itemsize for step in np.array(array, order="C").strides]  # () for 0-d
    arguments = [storage + pickle.BINPERSID, _int(0), _tuple([_int(size) for size in array.shape]),
                 _tuple([_int(step) for step in strides]), pickle.NEWFALSE,
                 _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(arguments) + pickle.REDUCE


def state_dict_pickle(names: list[str], keys: dict[str, str], tensors: dict[str, np.ndarray]) -> bytes:
    body = b"".join(_string(name) + tensor_opcodes(keys[name], tensors[name]) for name in names)
    return (pickle.PROTO + bytes([2]) + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.MARK + body + pickle.SETITEMS + pickle.STOP)


def write_state_dict(tensors: dict[str, np.ndarray], name: str = "archive") -> bytes:
    """The bytes torch.save(OrderedDict of these tensors) would write (one storage per tensor)."""
    names = list(tensors)
    keys = {tensor_name: str(index) for index, tensor_name in enumerate(names)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", state_dict_pickle(names, keys, tensors))
        archive.writestr(f"{name}/byteorder", "little")
        for tensor_name in names:
            data = np.array(tensors[tensor_name], order="C")
            archive.writestr(f"{name}/data/{keys[tensor_name]}", data.astype(data.dtype.newbyteorder("<")).tobytes())
        archive.writestr(f"{name}/version", "3\n")
    return buffer.getvalue()
