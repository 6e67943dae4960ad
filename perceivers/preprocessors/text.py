"""Text preprocessor and its config, of the Perceiver IO language model.

Its byte ids are those of :class:`perceivers.tokenizers.BytesTokenizer` (official ``bytes_tokenizer.py``, HF
``PerceiverTokenizer``): 6 special ids, then UTF-8 byte ``b`` -> ``b + 6``; 262 ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import ConfigBase, check_int, check_scale
from perceivers.layers.init import init_trunc_normal
from perceivers.layers.position import TrainablePositionEncoding


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
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor of token ids (int64, int32, int16, int8 or "
                            f"uint8), got dtype {input_ids.dtype}")
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must have a non-empty shape (B, L), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > c.max_seq_len:
            raise ValueError(f"input_ids have length {input_ids.shape[1]} > max_seq_len={c.max_seq_len}")
        compiling = torch.compiler.is_compiling()  # values cannot be read while tracing: an id out of range fails there
        if not input_ids.is_meta and not compiling and (int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {c.vocab_size})")

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(input_ids)
        emb = self.embedding(input_ids.long())  # (B, L, C)
        return emb + self.position.pos_embs[: input_ids.shape[1]], emb
