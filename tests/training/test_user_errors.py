"""What a user gets wrong about training is a ``ConfigError`` (a ``UserError``) raised before any step: the engine's
device and strategy, a task's model, a pretrained folder, a setting that does not fit the model, a checkpoint. The
command line prints these as one line (tests/cli/test_cli.py); here the library raises them."""

from __future__ import annotations

import pytest
import torch

from perceivers.core.errors import ConfigError, UserError
from perceivers.training.checkpoint import CheckpointError
from perceivers.training.dist import resolve_device, setup
from perceivers.training.hip_mae import (
    HiPFinetuneTask,
    HiPMAETask,
    fourier_position_table,
)
from perceivers.training.task import model_config
from perceivers.training.tasks import (
    CopyTask,
    DigitsTask,
    TextTask,
    is_digits_classifier,
)


def test_engine_device_and_strategy(monkeypatch):
    with pytest.raises(ConfigError, match="strategy='bogus' is invalid"):
        setup("bogus", "cpu")
    with pytest.raises(ConfigError, match="device='nowhere' is invalid: expected a torch device"):
        resolve_device("nowhere", 0)
    if torch.cuda.is_available():
        missing = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"device='cuda:{missing}' is invalid: expected a CUDA device"):
            resolve_device(f"cuda:{missing}", 0)
    else:
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            resolve_device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun, without --strategy
    with pytest.raises(ConfigError, match="pass --strategy ddp or --strategy fsdp"):
        setup("none", "cpu")


def test_checkpoint_errors_are_user_errors():
    assert issubclass(CheckpointError, ConfigError) and issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointError, UserError)


def test_model_config_lists_the_models_that_fit():
    config = model_config("model", "perceiver-ar-debug", lambda c: True, "model", num_latents=4)
    assert config.num_latents == 4
    with pytest.raises(ConfigError, match=r"^model='nope' is invalid: expected a registered digits model: "
                                          r"perceiver-io-digits$"):
        model_config("model", "nope", is_digits_classifier, "digits model")
    with pytest.raises(ConfigError, match="none is registered"):
        model_config("model", "perceiver-io-digits", lambda c: False, "thing")


@pytest.mark.parametrize("task, message", [
    (DigitsTask(model="perceiver-io-language-debug"), "Perceiver IO classifier of 1x8x8 images into 10 classes"),
    (TextTask(model="perceiver-io-digits"), "Perceiver AR model: perceiver-ar-copy"),
    (TextTask(model="no-such-model"), "model='no-such-model' is invalid"),
    (TextTask(eval_context=32), "eval_context=32 is invalid: expected >= the model's context 1024"),
    (CopyTask(model="hip-debug"), "Perceiver AR model"),
    (CopyTask(num_latents=1), "num_latents=1 is invalid: expected >= 2"),
    (HiPMAETask(model="perceiver-ar-debug"), "HiP with use_mask_token=True"),
    (HiPFinetuneTask(model="hip-mae-digits", positions="random"), "HiP classifier of one (64, 1) image modality"),
])
def test_task_models_are_checked_before_building(task, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task.build_model()


def test_pretrained_folder_and_fourier_bands(tmp_path):
    from perceivers.models import create_model

    ar = create_model("perceiver-ar-debug").save_pretrained(tmp_path / "ar")
    with pytest.raises(ConfigError, match="pretrained=.*does not exist"):
        HiPFinetuneTask(pretrained=str(tmp_path / "missing")).build_model()
    with pytest.raises(ConfigError, match="expected the folder of a saved HiP .*not a PerceiverAR"):
        HiPFinetuneTask(pretrained=str(ar)).build_model()
    hip = create_model("hip-debug").save_pretrained(tmp_path / "hip")  # a HiP whose tables do not fit
    with pytest.raises(ConfigError, match="does not fit model='hip-mae-digits-classifier'"):
        HiPFinetuneTask(pretrained=str(hip)).build_model()
    with pytest.raises(ConfigError, match=r"fourier_bands=100 is invalid: expected an int in \[1, 7\]"):
        HiPFinetuneTask(positions="fourier", fourier_bands=100).build_model()
    assert fourier_position_table(8, 32, 7).shape == (64, 32)
