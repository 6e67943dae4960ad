"""Byte tokenizer, text preprocessor and its config, of the Perceiver IO language model.

Ids (official ``bytes_tokenizer.py``, HF ``PerceiverTokenizer``): PAD 0, BOS 1, EOS 2, MASK 3, CLS 4,
SEP 5, and UTF-8 byte ``b`` -> ``b + 6``: 262 ids. The official tokenizer adds no special tokens; HF
adds ``[CLS] ... [SEP]`` by default (``add_special_tokens=True`` here), shifting every byte by one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import ConfigBase, check_int, check_scale
from perceivers.layers.init import init_trunc_normal
from perceivers.layers.position import TrainablePositionEncoding

PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(6)
NUM_SPECIAL = 6
VOCAB_SIZE = 256 + NUM_SPECIAL
SPECIAL_TOKENS = {"[PAD]": PAD_ID, "[BOS]": BOS_ID, "[EOS]": EOS_ID, "[MASK]": MASK_ID, "[CLS]": CLS_ID,
                  "[SEP]": SEP_ID}
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


class BytesTokenizer:
    """UTF-8 bytes <-> ids with the official six special ids; stateless.

    ``special_tokens_in_text=True`` reads the literal spellings ``[PAD] [BOS] [EOS] [MASK] [CLS] [SEP]``
    in the text as their ids (as HF does); otherwise every character is encoded as bytes.
    """

    pad_id, bos_id, eos_id, mask_id, cls_id, sep_id = PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID
    vocab_size = VOCAB_SIZE

    def encode(self, text: str | bytes, *, add_special_tokens: bool = False,
               special_tokens_in_text: bool = False) -> list[int]:
        """Text (or raw bytes) -> ids; ``add_special_tokens`` wraps them in ``[CLS] ... [SEP]``."""
        if isinstance(text, bytes):
            ids = [b + NUM_SPECIAL for b in text]
        elif not isinstance(text, str):
            raise TypeError(f"text must be a str or bytes, got {type(text).__name__}")
        elif special_tokens_in_text:
            ids, start = [], 0
            for match in _SPECIAL_RE.finditer(text):
                ids += [b + NUM_SPECIAL for b in text[start:match.start()].encode("utf-8")]
                ids.append(SPECIAL_TOKENS[match.group()])
                start = match.end()
            ids += [b + NUM_SPECIAL for b in text[start:].encode("utf-8")]
        else:
            ids = [b + NUM_SPECIAL for b in text.encode("utf-8")]
        return [CLS_ID, *ids, SEP_ID] if add_special_tokens else ids

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Ids -> text: special ids (< 6) are dropped, invalid UTF-8 becomes U+FFFD."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in values if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise ValueError(f"ids must be in [0, {VOCAB_SIZE}), got {bad[:5]}")
        return bytes(i - NUM_SPECIAL for i in values if i >= NUM_SPECIAL).decode("utf-8", errors="replace")

    def batch(self, texts: Sequence[str | bytes], *, add_special_tokens: bool = False,
              special_tokens_in_text: bool = False, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode and right-pad with PAD to the longest: ``(ids (B, L) int64, mask (B, L) bool, True = real)``.

        Raises ``ValueError`` if a text is longer than ``max_length`` ids (nothing is truncated silently).
        """
        if isinstance(texts, (str, bytes)) or not texts:
            raise TypeError("texts must be a non-empty sequence of str/bytes (wrap a single text in a list)")
        encoded = [self.encode(t, add_special_tokens=add_special_tokens, special_tokens_in_text=special_tokens_in_text)
                   for t in texts]
        longest = max(len(e) for e in encoded)
        if max_length is not None and longest > max_length:
            raise ValueError(f"a text encodes to {longest} ids, more than max_length={max_length}")
        longest = max(longest, 1)
        ids = torch.full((len(encoded), longest), PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(encoded), longest, dtype=torch.bool)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = torch.tensor(e, dtype=torch.long)
            mask[row, :len(e)] = True
        return ids, mask


@dataclass(frozen=True, kw_only=True)
class TextPreprocessorConfig(ConfigBase):
    """Byte embedding ``(vocab_size, num_channels)`` + learned positions ``(max_seq_len, num_channels)``, added
    (official text input: ``hk.Embed(262, 768)`` plus a learned ``2048 x 768`` position table).

    ``embed_init_scale``: std of the truncated-normal byte embedding (Haiku ``hk.Embed`` default 1.0);
    ``pos_init_scale``: std of the position table (official ``TrainablePositionEncoding``, 0.02).
    """

    type: ClassVar[str] = "text"  # the tag that names this preprocessor in a model config

    vocab_size: int = 262
    num_channels: int = 768
    max_seq_len: int = 2048
    embed_init_scale: float = 1.0
    pos_init_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_channels", "max_seq_len"):
            check_int(name, getattr(self, name))
        check_scale("embed_init_scale", self.embed_init_scale)
        check_scale("pos_init_scale", self.pos_init_scale)

    @property
    def token_channels(self) -> int:
        """Channels of the tokens fed to the encoder: ``num_channels``."""
        return self.num_channels

    def debug_size(self) -> TextPreprocessorConfig:
        """The same input at test size: the same ids, 16 channels, at most 32 positions."""
        return self.replace(num_channels=16, max_seq_len=min(self.max_seq_len, 32))


class TextPreprocessor(nn.Module):
    """``input_ids: (B, L)`` -> ``(embedding + positions[:L] (B, L, C), embedding (B, L, C))``, ``L <= max_seq_len``."""

    def __init__(self, config: TextPreprocessorConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.num_channels)
        self.position = TrainablePositionEncoding(config.max_seq_len, config.num_channels,
                                                  init_scale=config.pos_init_scale)

    def init_weights(self) -> None:
        init_trunc_normal(self.embedding.weight, self.config.embed_init_scale)
        self.position.init_weights()

    def check_input(self, input_ids: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``input_ids`` is an integer ``(B, L)`` of valid ids."""
        c = self.config
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must have a non-empty shape (B, L), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > c.max_seq_len:
            raise ValueError(f"input_ids have length {input_ids.shape[1]} > max_seq_len={c.max_seq_len}")
        if not input_ids.is_meta and (int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {c.vocab_size})")

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(input_ids)
        emb = self.embedding(input_ids.long())  # (B, L, C)
        return emb + self.position.pos_embs[: input_ids.shape[1]], emb
