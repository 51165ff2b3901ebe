"""Read the tensors of a PyTorch state dict saved in the *legacy* format, without PyTorch.

``torch.save`` before PyTorch 1.6 (and with ``_use_new_zipfile_serialization=False`` since) writes one
stream: five pickles in a row (the magic number, the protocol version, a ``sys_info`` dict, the state
dict, the list of storage keys) followed by the raw storages, each an int64 element count and the
elements, little-endian. The state dict pickle refers to storages by *persistent id* and builds
tensors with ``torch._utils._rebuild_tensor_v2``.

Unpickling runs whatever global a file names, so the unpickler here resolves only the few names a
state dict of float and integer tensors needs and refuses any other: a file that asks for
``os.system`` (or any PyTorch class not listed) is an error, not code that runs.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# PyTorch storage classes -> numpy little-endian dtypes (the element size follows from the dtype).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a legacy PyTorch state dict this reader accepts (message says why)."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    size: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _StorageRef, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, requires_grad: bool = False, backward_hooks: Any = None
                       ) -> _TensorRef:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict; storages become references filled in later."""

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__(handle)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TorchFileError(f"refused global {module}.{name}: not part of a tensor state dict") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, size = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unexpected storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFileError("storage views are not supported")
        ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, size))
        return ref


def _plain_load(handle: IO[bytes]) -> Any:
    """A header pickle: only plain values (ints, dicts, strings), no global at all."""
    unpickler = _RestrictedUnpickler(handle)
    return unpickler.load()


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of every tensor in a legacy-format ``torch.save`` file at ``path``.

    Raises :class:`TorchFileError` when the file is not one (zip format, truncated, refused globals,
    tensors outside their storage) and ``OSError`` when it cannot be read.
    """
    with open(path, "rb") as handle:
        try:
            magic = _plain_load(handle)
            if magic != MAGIC_NUMBER:
                raise TorchFileError("not a legacy PyTorch file (wrong magic number; a zip-format "
                                     "torch.save file is not supported)")
            protocol = _plain_load(handle)
            if protocol != PROTOCOL_VERSION:
                raise TorchFileError(f"unsupported PyTorch protocol version {protocol!r}")
            sys_info = _plain_load(handle)
            if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
                raise TorchFileError("not a little-endian PyTorch file")
            unpickler = _RestrictedUnpickler(handle)
            state = unpickler.load()
            keys = _plain_load(handle)
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise TorchFileError(f"corrupt PyTorch file: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict):
            raise TorchFileError(f"the file holds a {type(state).__name__}, not a state dict")
        if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
            raise TorchFileError("corrupt PyTorch file: its storage list does not match its tensors")
        data: dict[str, np.ndarray] = {}
        for key in map(str, keys):
            ref = unpickler.storages[key]
            header = handle.read(8)
            if len(header) != 8:
                raise TorchFileError(f"truncated PyTorch file: storage {key} is missing")
            (count,) = struct.unpack("<q", header)
            if count != ref.size:
                raise TorchFileError(f"corrupt PyTorch file: storage {key} holds {count} elements, "
                                     f"its tensors say {ref.size}")
            raw = handle.read(count * ref.dtype.itemsize)
            if len(raw) != count * ref.dtype.itemsize:
                raise TorchFileError(f"truncated PyTorch file: storage {key} is cut short")
            data[key] = np.frombuffer(raw, dtype=ref.dtype)
        if handle.read(1):
            raise TorchFileError("corrupt PyTorch file: bytes after the last storage")
    tensors: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _TensorRef):
            raise TorchFileError(f"entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensors[str(name)] = _materialise(str(name), tensor, data[tensor.storage.key])
    return tensors


def _materialise(name: str, tensor: _TensorRef, storage: np.ndarray) -> np.ndarray:
    if len(tensor.shape) != len(tensor.stride) or any(s < 0 for s in (*tensor.shape, *tensor.stride)):
        raise TorchFileError(f"tensor {name!r} has an invalid shape or stride")
    if any(side == 0 for side in tensor.shape):
        return np.zeros(tensor.shape, dtype=storage.dtype)
    last = tensor.offset + sum((side - 1) * step
                               for side, step in zip(tensor.shape, tensor.stride, strict=True))
    if tensor.offset < 0 or last >= len(storage):
        raise TorchFileError(f"tensor {name!r} reaches outside its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset:], shape=tensor.shape,
                                           strides=tuple(step * itemsize for step in tensor.stride),
                                           writeable=False)
    return np.array(view)  # a contiguous copy that owns its memory
