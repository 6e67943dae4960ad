"""Masked byte filling with a byte-level Perceiver IO MLM (official MLM colab: one pass, argmax per byte).

Every ``mask_token`` occurrence in the text stands for one masked byte (``[MASK]`` x 5 = a 5-byte span).
The model is run once on the whole sequence and each masked position takes its most likely *byte* id
(special ids are never predicted); every other byte is kept as it was. A model or text that cannot be filled is a
:class:`~perceivers.core.errors.ConfigError` (a ``ValueError``) naming the problem, raised before the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.tokenizers import (
    CLS_ID,
    MASK_ID,
    NUM_SPECIAL,
    SEP_ID,
    VOCAB_SIZE,
    BytesTokenizer,
)


@dataclass(frozen=True)
class FillMaskResult:
    """``input_ids``/``filled_ids``: ``(L,)`` ids before/after filling; ``text``: the filled text."""

    input_ids: Tensor
    filled_ids: Tensor
    text: str


def masked_ids(text: str, *, mask_token: str = "[MASK]", add_special_tokens: bool = False) -> list[int]:
    """Byte ids of ``text`` with one MASK id per ``mask_token`` occurrence; ``ConfigError`` if there is none."""
    if not isinstance(text, str):
        raise ConfigTypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(mask_token, str) or not mask_token:
        raise ConfigError(f"mask_token={mask_token!r} is invalid: expected a non-empty string")
    pieces = text.split(mask_token)
    if len(pieces) == 1:
        raise ConfigError(f"the text contains no {mask_token!r}: write one {mask_token} per byte to fill, "
                          f"e.g. 'Paris is the capital of {mask_token * 6}.'")
    tok = BytesTokenizer()
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(MASK_ID)
        ids += tok.encode(piece)
    return [CLS_ID, *ids, SEP_ID] if add_special_tokens else ids


def _byte_mlm_problem(model: nn.Module) -> str | None:
    """Why ``model`` is not a byte-level Perceiver IO MLM, or ``None`` when it is one."""
    from perceivers.models.perceiver_io.language import PerceiverIOLanguage

    if not isinstance(model, PerceiverIOLanguage):
        return f"a {type(model).__name__}"
    if not model.config.is_mlm:
        return "a sequence classifier"
    if model.config.preprocessor.vocab_size < VOCAB_SIZE:
        return f"a vocabulary of {model.config.preprocessor.vocab_size} ids"
    return None


@torch.no_grad()
def fill_mask(model: nn.Module, text: str, *, mask_token: str = "[MASK]", add_special_tokens: bool = False,
              device: str | torch.device = "cpu") -> FillMaskResult:
    """Fill every masked byte of ``text`` with ``model`` (a ``PerceiverIOLanguage`` with an MLM decoder)."""
    problem = _byte_mlm_problem(model)
    if problem is not None:
        raise ConfigError(f"fill-mask needs a byte-level Perceiver IO masked language model "
                          f"(e.g. perceiver-io-language-mlm, {VOCAB_SIZE} ids), got {problem}")
    ids = masked_ids(text, mask_token=mask_token, add_special_tokens=add_special_tokens)
    limit = model.config.preprocessor.max_seq_len
    if len(ids) > limit:
        raise ConfigError(f"the text is {len(ids)} byte ids long (masks and special tokens included); "
                          f"this model reads at most {limit}")
    input_ids = torch.tensor(ids, dtype=torch.long)
    logits = model.eval()(input_ids[None].to(device))[0].cpu()  # (L, V)
    best_byte = logits[:, NUM_SPECIAL:].argmax(dim=-1) + NUM_SPECIAL  # (L,): never a special id
    filled = torch.where(input_ids == MASK_ID, best_byte, input_ids)
    return FillMaskResult(input_ids=input_ids, filled_ids=filled, text=BytesTokenizer().decode(filled))
