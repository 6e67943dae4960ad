"""The copy-task data, its metric and `perceivers train copy` on the engine (toy sizes)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from perceivers.data.copy_task import (
    MirroredSequences,
    copy_positions,
    mirrored_sequences,
)
from perceivers.tokenizers import AR_EOS_ID as EOS_ID
from perceivers.tokenizers import AR_SOS_ID as SOS_ID
from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import copy
from perceivers.training.tasks import CopyTask


def test_sequences_mirror_their_first_half_between_sos_and_eos():
    seq = mirrored_sequences(5, 12, torch.Generator().manual_seed(0))
    assert seq.shape == (5, 12) and seq.dtype == torch.long
    assert (seq[:, 0] == SOS_ID).all() and (seq[:, -1] == EOS_ID).all()
    assert torch.equal(seq[:, 1:6], seq[:, 6:11].flip(1))
    assert ((seq[:, 1:11] >= 3) & (seq[:, 1:11] <= 258)).all()


def test_dataset_items_depend_only_on_seed_and_index():
    a, b = MirroredSequences(size=100, length=10, seed=3), MirroredSequences(size=100, length=10, seed=3)
    assert torch.equal(a[7], b[7]) and not torch.equal(a[7], a[8])
    assert not torch.equal(a[7], MirroredSequences(size=100, length=10, seed=4)[7])
    with pytest.raises(IndexError):
        a[100]
    # no training item replays the evaluation stream (odd seed 12345): item 12345 of seed 0 used to (its
    # generator seed was seed * 1_000_003 + i); item 6172 now has seed 12344
    evaluation = mirrored_sequences(256, 10, torch.Generator().manual_seed(CopyTask.EVAL_SEED))
    train = MirroredSequences(size=20000, length=10, seed=0)
    assert not any(torch.equal(train[i], evaluation[0]) for i in (6172, 12345))


@pytest.mark.parametrize("length", [3, 7, 2, True, 10.0])
def test_bad_lengths_are_named(length):
    with pytest.raises(ValueError, match="length"):
        mirrored_sequences(1, length)


def test_copy_positions_mark_the_mirrored_half_and_its_farthest_quarter():
    # length 18: SOS at 0, x_1..x_8 at 1..8, mirrored at 9..16 (x_j at 17 - j), EOS at 17; 10 latents
    # predict indices 8..17.
    copy, far = copy_positions(18, 10)
    assert copy.tolist() == [False] + [True] * 8 + [False]
    assert far.tolist() == [False] * 7 + [True, True, False]  # the copies of x_2 and x_1 (k // 4 = 2)


class _Oracle(nn.Module):
    """Logits that put the true next token first, except at the positions in ``wrong``."""

    def __init__(self, length: int, wrong: list[int]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.length, self.wrong = length, wrong

    def forward(self, inputs, lengths, *, num_latents):
        b = inputs.shape[0]
        full = torch.cat([inputs, torch.full((b, 1), EOS_ID)], dim=1)  # the true sequence
        targets = full[:, self.length - num_latents:]
        logits = torch.zeros(b, num_latents, 259)
        logits.scatter_(2, targets[..., None], 1.0)
        logits[:, self.wrong] = 0.0
        logits[:, self.wrong, 0] = 1.0  # argmax PAD: wrong
        return logits + self.anchor


def test_evaluation_scores_copies_and_farthest_quarter():
    task = CopyTask(model="perceiver-ar-copy", length=18, num_latents=10, eval_sequences=8)
    perfect = task.evaluate(_Oracle(18, wrong=[]))
    assert perfect["copy_accuracy"] == 1.0 and perfect["far_quarter_accuracy"] == 1.0
    assert perfect["max_distance"] == 15 and perfect["num_scored_copies"] == 8 * 8
    # latent 8 predicts the last copy (x_1): one of 8 copies wrong, half of the farthest quarter wrong
    half = task.evaluate(_Oracle(18, wrong=[8]))
    assert half["copy_accuracy"] == pytest.approx(7 / 8) and half["far_quarter_accuracy"] == pytest.approx(0.5)


def test_task_validates_its_settings():
    with pytest.raises(ValueError, match="length"):
        CopyTask(length=33)
    with pytest.raises(ValueError, match="num_latents"):
        CopyTask(length=16, num_latents=16)
    with pytest.raises(ValueError, match="eval_sequences"):
        CopyTask(eval_sequences=0)
    with pytest.raises(ValueError, match="num_latents"):
        CopyTask(length=16, num_latents=1).train_dataset(0)
    recipe = apply_overrides(copy(), [("length", "128"), ("latents", "64")])
    assert recipe.task.build_model().config.max_context_length == 127


def test_training_items_follow_the_engine_seed():
    task = CopyTask(length=10, num_latents=5, train_sequences=4)
    assert torch.equal(task.train_dataset(0)[1], MirroredSequences(size=4, length=10, seed=0)[1])
    assert not torch.equal(task.train_dataset(0)[1], task.train_dataset(3)[1])
    recipe = apply_overrides(copy(), [("seed", "3")])  # one --seed: the model's initialisation and the data stream
    assert recipe.engine.seed == 3 and "seed" not in recipe.task.settings()


def test_train_copy_runs_on_the_engine_and_learns(tmp_path):
    torch.manual_seed(0)
    task = CopyTask(length=6, num_latents=5, channels=64, num_layers=1, num_heads=4, eval_sequences=64)
    engine = EngineConfig(steps=300, epochs=None, batch_size=32, lr=3e-3, warmup_fraction=0.1, grad_clip=1.0,
                          log_every=50)
    lines: list[str] = []
    result = run_task(task, engine, tmp_path, progress=False, log=lines.append)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["copy_accuracy"] == pytest.approx(result["copy_accuracy"])
    assert result["max_distance"] == 3 and "far_quarter_accuracy" not in result  # 2 bytes: no farthest quarter
    # Chance is 1/256 (and an untrained model, zero logits, scores 0). Retrieval is learned late and abruptly,
    # so a few seconds of training only start it (~0.3 here); `perceivers train copy` reaches ~100 %.
    assert result["copy_accuracy"] > 10 / 256
    assert lines[-2] == task.summary(result) and lines[-2].startswith("copy accuracy on the mirrored half: ")


def test_copy_model_count_by_component():
    from perceivers.models import create_model, get_entry

    model = create_model("perceiver-ar-copy", device="meta")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    block = 2 * 128 + 4 * (128 * 128 + 128) + 2 * 128 + (128 * 512 + 512) + (512 * 128 + 128)  # LNs, q/k/v/o, LN, MLP
    assert count(model.cross_attend) == block + 2 * 128  # one more input LayerNorm (keys/values)
    assert all(count(layer) == block for layer in model.self_attends) and len(model.self_attends) == 2
    expected = (259 * 128 + 64 * 128 + (128 * 128 + 128) + (block + 256) + 2 * block + 256 + (128 * 259 + 259))
    assert model.num_parameters() == expected == 686_595 == get_entry("perceiver-ar-copy").num_parameters
    assert not model.position_embeddings.requires_grad  # frozen sinusoid table, counted as official counts do
