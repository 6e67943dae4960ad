"""Shared training pieces: classifier evaluation and the digits data.

The loop itself (learning, seeding, config validation), the optimisers, schedules and weight-decay groups are tested
in test_engine.py; tasks, recipes and losses in test_tasks.py."""

from __future__ import annotations

import pytest
import torch

from perceivers import DecoderConfig, EncoderConfig, PerceiverIO, PerceiverIOConfig
from perceivers.data.digits import load_digits_split, random_shift
from perceivers.training.losses import evaluate_classifier


def _tiny_model() -> PerceiverIO:
    enc = EncoderConfig(num_latents=4, num_latent_channels=16, num_blocks=1, num_self_attends_per_block=1,
                        num_self_attend_heads=2)
    dec = DecoderConfig(type="classification", num_outputs=3, num_query_channels=16, use_query_residual=True)
    return PerceiverIO(PerceiverIOConfig(input_channels=8, encoder=enc, decoder=dec))


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic: 6 noisy tokens around one of 3 fixed mean vectors; the label is which mean."""
    means = torch.randn(3, 8, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return means[y][:, None, :] + 1.5 * torch.randn(n, 6, 8, generator=g), y


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    model = _tiny_model()
    images, labels = _task(37, 1)
    result = evaluate_classifier(model, images, labels, batch_size=8)  # batches of 8 + a remainder of 5
    with torch.no_grad():
        logits = model.eval()(images)
    assert result["num_examples"] == 37
    assert result["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_digits_split_is_fixed_and_stratified():
    d = load_digits_split()
    assert d.train_images.shape == (1437, 1, 8, 8) and d.test_images.shape == (360, 1, 8, 8)
    assert d.train_images.dtype == torch.float32 and 0.0 <= d.train_images.min() and d.train_images.max() <= 1.0
    counts = torch.bincount(d.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert torch.equal(load_digits_split().test_labels, d.test_labels)


def test_random_shift_moves_content_within_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(32, 1, 8, 8)
    x[:, :, 3, 4] = 1.0
    y = random_shift(x, 1, g)
    assert y.shape == x.shape and torch.all(y.sum(dim=(1, 2, 3)) == 1.0)
    rows, cols = y[:, 0].nonzero(as_tuple=True)[1:]
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {3, 4, 5}
    assert torch.equal(random_shift(x, 0, g), x)
