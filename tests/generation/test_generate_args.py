"""generate() refuses what it used to accept silently or hand to the allocator: bool prompt_lengths, a
non-finite beam length_penalty, a max_new_tokens beyond MAX_NEW_TOKENS or past an absolute position table."""

from __future__ import annotations

import math

import pytest
import torch
from testkit.perceiver_ar import make

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.generation import generate
from perceivers.generation.generate import MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def model():
    return make().eval()


def _prompt(model):
    return torch.randint(3, model.config.vocab_size, (2, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("lengths", [torch.tensor([True, True]), [True, False], torch.tensor([2.0, 3.0])],
                         ids=["bool-tensor", "bool-list", "float"])
def test_prompt_lengths_must_be_integers(model, lengths):
    with pytest.raises(ConfigTypeError, match="prompt_lengths must hold integers, got dtype torch.(bool|float32)"):
        generate(model, _prompt(model), lengths, max_new_tokens=2)


@pytest.mark.parametrize("penalty", [math.nan, math.inf, -math.inf])
def test_length_penalty_must_be_finite(model, penalty):
    with pytest.raises(ConfigError, match=f"length_penalty={penalty} is invalid: expected a finite float"):
        generate(model, _prompt(model), max_new_tokens=2, num_beams=2, length_penalty=penalty)


@pytest.mark.parametrize("n", [10**12, MAX_NEW_TOKENS + 1])
def test_a_huge_max_new_tokens_fails_fast_naming_it(model, n):
    with pytest.raises(ConfigError, match=f"max_new_tokens={n} is invalid: expected at most 16,777,216"):
        generate(model, _prompt(model), max_new_tokens=n)


def test_max_new_tokens_past_an_absolute_position_table_is_refused_up_front():
    model = make("absolute").eval()
    room = model.config.num_positions - 4
    generate(model, _prompt(model), max_new_tokens=room)  # exactly fits
    with pytest.raises(ConfigError, match=f"max_new_tokens={room + 1} would run past .* at most {room} new tokens"):
        generate(model, _prompt(model), max_new_tokens=room + 1)
