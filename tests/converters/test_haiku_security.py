"""The restricted Haiku unpickler: every protocol for plain trees, nothing else, no array beyond its bytes."""

from __future__ import annotations

import os
import pickle
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from perceivers.converters.haiku_pickle import load_haiku_pickle
from perceivers.core.errors import ConfigError

TREE = {"enc/linear": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(0, np.float32)},
        "enc/ln": OrderedDict(scale=np.asfortranarray(np.arange(6.0).reshape(2, 3)), offset=np.array([1, -2], ">i4")),
        "bn/~/mean_ema": {"counter": np.array(7, np.int32), "hidden": np.float32(2.5), "flag": np.array([True])}}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_loads_a_plain_tree(tmp_path, protocol):
    path = tmp_path / "p.pickle"
    path.write_bytes(pickle.dumps({"params": TREE, "state": {}}, protocol=protocol))
    params, state = load_haiku_pickle(path)
    assert state == {} and params.keys() == TREE.keys()
    for module, arrays in TREE.items():
        for name, value in arrays.items():
            got = params[module][name]
            assert np.asarray(got).dtype == np.asarray(value).dtype and np.array_equal(got, value), (module, name)
    assert params["enc/ln"]["scale"].flags.f_contiguous


class _Call:
    """Pickles as a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("func", [os.system, eval], ids=["os.system", "builtins.eval"])
def test_other_globals_are_refused_without_running(tmp_path, protocol, func):
    marker = tmp_path / "ran"
    code = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"m": {"w": _Call(func, code)}}, protocol=protocol))
    with pytest.raises(ConfigError, match=r"refusing to unpickle (posix|os|builtins|__builtin__)\.(system|eval)"):
        load_haiku_pickle(path)
    assert not marker.exists()


def test_object_arrays_and_numpy_internals_are_refused(tmp_path):
    path = tmp_path / "o.pickle"
    path.write_bytes(pickle.dumps({"m": {"w": np.array([{"a": 1}], dtype=object)}}))
    with pytest.raises(ConfigError, match="refusing dtype 'O"):
        load_haiku_pickle(path)
    path.write_bytes(pickle.dumps({"m": {"w": _Call(np.load, "x.npy")}}))
    with pytest.raises(ConfigError, match="refusing to unpickle numpy"):
        load_haiku_pickle(path)


class _HugeArray:
    """Pickles as numpy does an ndarray, but declaring (32768, 32768) float32 (4 GiB) over 4 bytes of data."""

    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(1, np.float32))[0], (np.ndarray, (0,), b"b"),
                (1, (1 << 15, 1 << 15), np.dtype("float32"), False, b"\0" * 4))


class _HugeStart:
    """Pickles as numpy's ``_reconstruct(ndarray, (3 GiB,), b'b')`` (numpy allocates that at once) + a 1-float state."""

    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(1, np.float32))[0], (np.ndarray, (3 << 30,), b"b"),
                (1, (1,), np.dtype("float32"), False, b"\0" * 4))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(("payload", "message"), [
    (_HugeArray, (r"declares shape \(32768, 32768\) float32 \(4\.0 GiB\) but the file holds 4 bytes for it: the "
                 r"file is truncated or crafted")),
    (_HugeStart, r"refusing an ndarray reconstruction declaring shape \(3221225472,\)")], ids=["state", "start"])
def test_a_declared_size_beyond_the_bytes_is_refused_without_allocating(tmp_path, protocol, payload, message):
    path = tmp_path / "huge.pickle"
    path.write_bytes(pickle.dumps({"m": {"w": payload()}}, protocol=protocol))
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=message):
            load_haiku_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # numpy reports its buffers to tracemalloc; 4 GiB were never requested


def test_a_protocol5_buffer_shorter_than_its_shape_is_refused(tmp_path):
    from numpy._core import numeric  # noqa: F401  (the module protocol 5 pickles name)

    reduce = np.arange(4, dtype=np.float32).__reduce_ex__(5)
    func, (buf, dtype, _, order) = reduce[0], reduce[1]
    path = tmp_path / "p5.pickle"
    path.write_bytes(pickle.dumps({"m": {"w": _Call(func, buf, dtype, (1 << 20,), order)}}, protocol=5))
    with pytest.raises(ConfigError, match=r"declares shape \(1048576,\) float32 \(4\.0 MiB\) but the file holds"):
        load_haiku_pickle(path)
