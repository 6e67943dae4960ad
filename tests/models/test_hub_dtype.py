"""from_pretrained gives a model of one dtype (``dtype=``, default float32) whatever the file mixes, and refuses
integer / bool tensors where floats belong, NaN or infinite weights and deeply nested config.json files with a
ConfigError naming the tensor or the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit.models import randomize_, tiny_config, tiny_prep

from perceivers import PerceiverIO, from_pretrained
from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.models.hub import CONFIG_NAME, WEIGHTS_NAME

KEY = "encoder.latents"


@pytest.fixture
def saved(tmp_path):
    model = randomize_(PerceiverIO(tiny_config(prep=tiny_prep("conv")))).eval()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _rewrite(path, key, fn):
    state = load_file(str(path / WEIGHTS_NAME))
    assert key in state
    state[key] = fn(state[key])
    save_file(state, str(path / WEIGHTS_NAME))


def _float_dtypes(model):
    return {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}


def test_a_float16_tensor_in_the_file_gives_a_float32_model(saved):
    model, path = saved
    _rewrite(path, KEY, lambda t: t.half())
    loaded = from_pretrained(path)
    assert _float_dtypes(loaded) == {torch.float32}
    assert torch.equal(loaded.state_dict()[KEY], model.state_dict()[KEY].half().float())
    x = torch.randn(2, 3, 8, 8)
    assert loaded(x).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_argument_sets_every_float_tensor(saved, dtype):
    model, path = saved
    loaded = from_pretrained(path, dtype=dtype)
    assert _float_dtypes(loaded) == {dtype}
    assert loaded.state_dict()["preprocessor.conv.batchnorms.0.num_batches_tracked"].dtype == torch.int64  # stays an integer
    assert torch.equal(loaded.state_dict()[KEY], model.state_dict()[KEY].to(dtype))


@pytest.mark.parametrize("dtype, error", [("float32", ConfigTypeError), (torch.int64, ConfigError),
                                          (torch.bool, ConfigError)])
def test_a_bad_dtype_argument_is_named(saved, dtype, error):
    with pytest.raises(error, match="dtype"):
        from_pretrained(saved[1], dtype=dtype)


@pytest.mark.parametrize("to", [lambda t: t.to(torch.int32), lambda t: t > 0, lambda t: t.to(torch.uint8)],
                         ids=["int32", "bool", "uint8"])
def test_integer_or_bool_weights_are_refused_naming_the_tensor(saved, to):
    _rewrite(saved[1], KEY, to)
    with pytest.raises(ConfigError, match=f"holds '{KEY}' as torch.(int32|bool|uint8): expected floating-point"):
        from_pretrained(saved[1])


def test_a_float_step_counter_is_refused(saved):
    _rewrite(saved[1], "preprocessor.conv.batchnorms.0.num_batches_tracked", lambda t: t.float())
    with pytest.raises(ConfigError, match="num_batches_tracked' as torch.float32: expected integer"):
        from_pretrained(saved[1])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_tensor_and_position(saved, value):
    def poison(t):
        t = t.clone()
        t[1, 2] = value
        return t

    _rewrite(saved[1], KEY, poison)
    with pytest.raises(ConfigError, match=rf"model.safetensors: {KEY}\[1, 2\] is -?(nan|inf): expected finite"):
        from_pretrained(saved[1])


def test_a_float16_overflow_is_caught_after_the_cast(saved):
    _rewrite(saved[1], KEY, lambda t: t.double() * 1e300)  # finite in the file, infinite in float32
    with pytest.raises(ConfigError, match=f"{KEY}.* is -?inf"):
        from_pretrained(saved[1])


def test_a_deeply_nested_config_is_a_clear_error_not_recursion(saved):
    path = saved[1] / CONFIG_NAME
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        from_pretrained(saved[1])
