"""A safe reader for the official Haiku parameter pickles: plain trees of dicts and numpy arrays only.

A pickle can run code: every global it names goes through :meth:`RestrictedUnpickler.find_class`, which hands
out only the containers (``dict``, ``OrderedDict``, Haiku's ``FlatMapping`` rebuilt as a dict) and *our own*
stand-ins for numpy's reconstruction functions. Those stand-ins never let numpy parse untrusted state: an array
is built only from a byte payload whose length equals ``prod(shape) * itemsize`` for a plain numeric dtype (bool,
int, uint, float, complex), checked before anything is allocated, so a tiny pickle declaring a huge array is
refused at once instead of allocating it. Every pickle protocol (0 to 5) numpy writes is accepted: protocols 0-2
store bytes as ``_codecs.encode(str, 'latin1')``, protocol 5 arrays come through ``numeric._frombuffer``.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from perceivers.core.errors import ConfigError

#: dtype kinds an official parameter file may hold: bool, signed and unsigned ints, floats, complex.
NUMERIC_KINDS = "biufc"


class RefusedClassError(pickle.UnpicklingError):
    """The pickle names a global, or holds data, that the restricted unpickler does not allow."""


class FlatMapping(dict):
    """Stand-in for ``haiku._src.data_structures.FlatMapping``: a plain dict however it was pickled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if args and not isinstance(args[0], Mapping):
            args = (dict(args[0]),)
        self.update(*args, **kwargs)

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):
            state = next((s for s in state if isinstance(s, Mapping)), {})
        if not isinstance(state, Mapping):
            raise RefusedClassError(f"a FlatMapping's state must be a mapping, got {type(state).__name__}")
        self.update(state)


class DtypeSpec:
    """A dtype as the pickle declares it (``numpy.dtype('f4', False, True)`` then a state naming the byte order),
    resolved by :func:`resolve_dtype` to a plain numeric ``np.dtype``; numpy never parses the state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise RefusedClassError(f"refusing dtype {spec!r}: only plain numeric dtypes are allowed")
        try:
            dtype = np.dtype(spec)
        except TypeError as exc:
            raise RefusedClassError(f"refusing dtype {spec!r}: {exc}") from None
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise RefusedClassError(f"refusing dtype {spec!r}: only plain numeric dtypes are allowed")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if order not in ("<", ">", "|", "="):
            raise RefusedClassError(f"refusing dtype byte order {order!r}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def resolve_dtype(value: Any) -> np.dtype:
    if not isinstance(value, DtypeSpec):
        raise RefusedClassError(f"expected a numpy dtype, got {type(value).__name__}")
    return value.dtype


def array_from_payload(data: Any, dtype: np.dtype, shape: Any, order: str = "C") -> np.ndarray:
    """An array of ``shape`` and ``dtype`` over ``data`` (bytes), refused unless the payload holds exactly
    ``prod(shape) * itemsize`` bytes: checked before allocating, so a declared size never exceeds the file."""
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise RefusedClassError(f"refusing an array with shape {shape!r}: expected a tuple of non-negative ints")
    if isinstance(data, (memoryview, pickle.PickleBuffer)):
        data = memoryview(data).cast("B")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RefusedClassError(f"refusing an array whose data is a {type(data).__name__}, not bytes")
    need = math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise RefusedClassError(
            f"an array declares shape {shape} {dtype.name} ({_size(need)}) but the file holds {_size(len(data))} "
            f"for it: the file is truncated or crafted")
    flat = np.frombuffer(data, dtype=dtype).copy()
    return flat.reshape(shape, order="F" if order == "F" else "C")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class PendingArray:
    """What ``multiarray._reconstruct(ndarray, (0,), b'b')`` returns here: an empty placeholder that the pickle's
    BUILD fills through ``__setstate__((version, shape, dtype, is_fortran, data))`` with a checked payload."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise RefusedClassError("refusing an ndarray state that is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state if len(state) == 5 else (1, *state)
        self.array = array_from_payload(data, resolve_dtype(dtype), shape, "F" if fortran else "C")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> PendingArray:
    """numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` then its state; numpy itself would allocate
    the shape declared here at once, so anything but that empty start is refused."""
    if subtype is not np.ndarray:
        raise RefusedClassError(f"refusing to reconstruct {subtype!r}: only numpy.ndarray")
    if shape not in ((0,), 0) or typecode not in (b"b", "b"):
        raise RefusedClassError(f"refusing an ndarray reconstruction declaring shape {shape!r} (numpy writes (0,) "
                                f"and the data's own shape after it): the file is crafted")
    return PendingArray()


def _scalar(dtype: Any, data: Any = b"") -> np.generic:
    return array_from_payload(data, resolve_dtype(dtype), ())[()]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    return array_from_payload(buffer, resolve_dtype(dtype), shape, order)


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: a str in latin-1, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedClassError("refusing _codecs.encode other than (str, 'latin1')")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocols 0-2 pickle an empty payload; ``bytes`` of anything else is refused."""
    if args:
        raise RefusedClassError("refusing bytes() with arguments")
    return b""


def _reconstructor(cls: Any, base: Any, state: Any = None) -> dict:
    """``copyreg._reconstructor`` as protocols 0-1 pickle a dict subclass: only Haiku's FlatMapping."""
    if cls is not FlatMapping or base not in (dict, object):
        raise RefusedClassError(f"refusing copyreg._reconstructor for {cls!r}")
    return FlatMapping(state or {})


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "dict"): dict,
    ("__builtin__", "dict"): dict,
    ("haiku._src.data_structures", "FlatMapping"): FlatMapping,
    ("haiku._src.data_structures", "FlatMap"): FlatMapping,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): DtypeSpec,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Hands out only the globals of ``_ALLOWED``; anything else is refused by name before it can run."""

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise RefusedClassError(
                f"refusing to unpickle {module}.{name}: Haiku parameter files may only contain dicts, "
                f"numpy arrays and haiku FlatMapping")
        return found


def _materialise(obj: Any, depth: int = 0) -> Any:
    """Replace the placeholders by their arrays (the tree is at most a few levels deep)."""
    if depth > 8:
        raise RefusedClassError("the parameter tree is nested more than 8 levels deep")
    if isinstance(obj, PendingArray):
        if obj.array is None:
            raise RefusedClassError("an ndarray without data")
        return obj.array
    if isinstance(obj, Mapping):
        return {k: _materialise(v, depth + 1) for k, v in obj.items()}
    return obj


def load_haiku_pickle(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Read an official parameter file safely: ``(params, state)`` as two-level dicts of arrays.

    A missing file is a ``FileNotFoundError``; a refused or unreadable one a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Haiku parameter file {str(path)!r} does not exist")
    try:
        obj = _materialise(RestrictedUnpickler(io.BytesIO(path.read_bytes())).load())
    except RefusedClassError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError, RecursionError,
            OverflowError) as exc:  # truncated or foreign files
        raise ConfigError(f"{path} is not a readable Haiku parameter pickle: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path}: expected a mapping of module paths, got {type(obj).__name__}")
    params, state = (obj["params"], obj.get("state") or {}) if "params" in obj else (obj, {})
    return two_level(params, path), two_level(state, path)


def two_level(tree: Any, path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{module: {param: array}}`` from a loaded tree; anything else is a :class:`ConfigError` naming the entry."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{path}: expected a mapping of module paths, got {type(tree).__name__}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for module, params in tree.items():
        if not isinstance(params, Mapping):
            raise ConfigError(f"{path}: module {module!r} holds a {type(params).__name__}, not a mapping of arrays")
        for name, value in params.items():
            if not isinstance(value, (np.ndarray, np.generic)):
                raise ConfigError(f"{path}: {module}/{name} is a {type(value).__name__}, not a numpy array")
        out[str(module)] = dict(params)
    return out
