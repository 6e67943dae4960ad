"""Clear errors for the Python API's edge cases: a model on the meta device called on real inputs, devices this
machine does not have, HiP with an empty batch or inputs of another dtype (also under autocast), token ids of
every integer dtype, and the MLM's num_outputs."""

from __future__ import annotations

import math

import pytest
import torch

from perceivers import create_model
from perceivers.core.errors import ConfigError, ConfigTypeError

FAMILIES = ["perceiver-io-language-debug", "perceiver-ar-debug", "hip-debug"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_meta_model_called_on_real_inputs_says_how_to_materialise_it(models, name):
    inputs = models[name].example_inputs()
    meta = create_model(name, device="meta")
    with pytest.raises(ValueError, match="parameters on the meta device .*to_empty.*init_weights"):
        meta(**inputs)
    meta.to_empty(device="cpu")
    meta.init_weights()
    meta(**inputs)  # materialised: runs


def test_a_meta_model_still_runs_on_meta_inputs(models):
    meta = create_model("perceiver-io-language-debug", device="meta")
    inputs = {k: v.to("meta") for k, v in models["perceiver-io-language-debug"].example_inputs().items()}
    assert meta(**inputs).is_meta


@pytest.mark.parametrize("device, error, match", [
    ("nonsense", ConfigError, "device='nonsense' is not a torch device"),
    ("cuda:99", ConfigError, "device='cuda:99': this machine has"),
    (3.5, ConfigTypeError, "device must be a str or torch.device"),
])
def test_create_model_names_a_bad_device(device, error, match):
    with pytest.raises(error, match=match):
        create_model("perceiver-ar-debug", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_create_model_on_cuda_without_cuda():
    with pytest.raises(ConfigError, match="device='cuda': this machine has 0 CUDA devices"):
        create_model("perceiver-ar-debug", device="cuda")


def _hip_inputs(models, fn):
    inputs = models["hip-debug"].example_inputs()["inputs"]
    return {"inputs": {k: fn(v) for k, v in inputs.items()}}


def test_hip_refuses_an_empty_batch(models):
    with pytest.raises(ValueError, match="must have a non-empty batch, got shape \\(0,"):
        models["hip-debug"](**_hip_inputs(models, lambda x: x[:0]))


@pytest.mark.parametrize("autocast", [False, True])
def test_every_family_names_a_float64_input_also_under_autocast(models, autocast):
    io = create_model("perceiver-io-digits").eval()
    cases = [(lambda: models["hip-debug"](**_hip_inputs(models, torch.Tensor.double)), "modality"),
             (lambda: io(torch.rand(1, 1, 8, 8, dtype=torch.float64)), "images")]
    for call, name in cases:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                pytest.raises(TypeError, match=f"{name}.* dtype is torch.float64 but the model parameters are "
                                               "torch.float32"):
            call()


def test_hip_accepts_the_autocast_dtype(models):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = models["hip-debug"](**_hip_inputs(models, lambda x: x.bfloat16()))
    assert all(torch.isfinite(v.float()).all() for part in out.values() for v in part.values())


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("name", ["perceiver-io-language-debug", "perceiver-ar-debug"])
def test_token_ids_of_every_integer_dtype_are_accepted(models, name, dtype):
    model = models[name]
    inputs = model.example_inputs()
    ids = inputs["input_ids"] % 100  # fits every integer dtype
    expected = model(**{**inputs, "input_ids": ids})
    torch.testing.assert_close(model(**{**inputs, "input_ids": ids.to(dtype)}), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["perceiver-io-language-debug", "perceiver-ar-debug"])
def test_float_token_ids_list_the_accepted_dtypes(models, name):
    inputs = models[name].example_inputs()
    with pytest.raises(TypeError, match=r"integer tensor of token ids \(int64, int32, int16, int8 or uint8\), got dtype torch.float32"):
        models[name](**{**inputs, "input_ids": inputs["input_ids"].float()})


def test_the_mlm_refuses_a_num_outputs_other_than_its_vocabulary():
    with pytest.raises(ConfigError, match="decoder.num_outputs=100 is invalid: expected preprocessor.vocab_size=262"):
        create_model("perceiver-io-language-debug", decoder={"num_outputs": 100})
    model = create_model("perceiver-io-language-debug", preprocessor={"vocab_size": 300}, decoder={"num_outputs": 300})
    assert model(**model.example_inputs()).shape[-1] == 300


def test_check_finite_inputs_names_the_first_bad_value_and_the_forward_does_not_check(models):
    from perceivers.models import check_finite_inputs

    hip_inputs = _hip_inputs(models, lambda x: x.clone())
    name = next(iter(hip_inputs["inputs"]))
    hip_inputs["inputs"][name][1, 3, 0] = float("nan")
    models["hip-debug"](**hip_inputs)  # no host read in the forward pass: NaN in, NaN out
    with pytest.raises(ConfigError, match=rf"inputs\['{name}'\]\[1, 3, 0\] is nan: expected finite values"):
        check_finite_inputs(**hip_inputs)
    mlm_inputs = models["perceiver-io-language-debug"].example_inputs()
    check_finite_inputs(**mlm_inputs)  # integer ids and bool masks pass
    with pytest.raises(ConfigError, match=r"images\[0, 0, 2, 1\] is -?inf"):
        check_finite_inputs(images=torch.zeros(1, 1, 4, 4).index_put_((torch.tensor(0),) * 2 + (torch.tensor(2),
                                                                        torch.tensor(1)), torch.tensor(-math.inf)))
