"""The two byte tokenizers of the family: UTF-8 bytes plus a few special ids, stateless.

========  ==========================================  ===================================
id        :class:`BytesTokenizer`                     :class:`ARBytesTokenizer`
          (Perceiver IO masked LM; official           (Perceiver AR byte models, see
          ``bytes_tokenizer.py``, HF                  docs/models.md#byte-tokenizers: text,
          ``PerceiverTokenizer``)                     copy task, ``perceivers generate``)
========  ==========================================  ===================================
0         ``[PAD]`` (``PAD_ID``)                      PAD (``AR_PAD_ID``)
1         ``[BOS]`` (``BOS_ID``)                      EOS (``AR_EOS_ID``)
2         ``[EOS]`` (``EOS_ID``)                      SOS (``AR_SOS_ID``)
3         ``[MASK]`` (``MASK_ID``)                    byte 0x00
4         ``[CLS]`` (``CLS_ID``)                      byte 0x01
5         ``[SEP]`` (``SEP_ID``)                      byte 0x02
byte b    ``b + 6`` (``NUM_SPECIAL``)                 ``b + 3`` (``AR_BYTE_OFFSET``)
vocab     262 (``VOCAB_SIZE``)                        259 (``AR_VOCAB_SIZE``)
========  ==========================================  ===================================

The two disagree on EOS (2 vs 1) and on the byte offset (6 vs 3): a model trained with one must be fed the ids of
that one. The Perceiver IO names are the unprefixed ones (as in HF); every Perceiver AR name starts with ``AR_``.
The official Perceiver IO tokenizer adds no special tokens; HF adds ``[CLS] ... [SEP]`` by default
(``add_special_tokens=True`` here), shifting every byte by one.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from perceivers.core.errors import ConfigError, ConfigTypeError

PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(6)
NUM_SPECIAL = 6
VOCAB_SIZE = 256 + NUM_SPECIAL
SPECIAL_TOKENS = {"[PAD]": PAD_ID, "[BOS]": BOS_ID, "[EOS]": EOS_ID, "[MASK]": MASK_ID, "[CLS]": CLS_ID,
                  "[SEP]": SEP_ID}
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))

AR_PAD_ID, AR_EOS_ID, AR_SOS_ID = 0, 1, 2
AR_BYTE_OFFSET = 3
AR_VOCAB_SIZE = 256 + AR_BYTE_OFFSET


_IDS_EXPECTED = "a sequence of ints or a 1-D integer tensor"


def _ids(ids: Sequence[int] | Tensor) -> list[int]:
    """``ids`` as a list of ints; ``ConfigTypeError`` / ``ConfigError`` naming ``ids`` for anything else (None, a
    str, floats, bools, nested lists, a 2-D tensor: decode one sequence at a time)."""
    if isinstance(ids, Tensor):
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise ConfigTypeError(f"ids must be {_IDS_EXPECTED}, got a tensor of dtype {ids.dtype}")
        if ids.dim() != 1:
            raise ConfigError(f"ids must be {_IDS_EXPECTED}, got a tensor of shape {tuple(ids.shape)} "
                              "(decode one row at a time)")
        return ids.tolist()
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):  # a numpy array
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, range)):
        raise ConfigTypeError(f"ids must be {_IDS_EXPECTED}, got {type(ids).__name__}")
    values = []
    for pos, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise ConfigTypeError(f"ids[{pos}] must be an int, got {type(i).__name__} {i!r:.40}")
        values.append(int(i))
    return values


class BytesTokenizer:
    """UTF-8 bytes <-> ids with the official six special ids (Perceiver IO); stateless.

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
        """Ids (a sequence of ints or a 1-D integer tensor) -> text: special ids (< 6) are dropped, invalid UTF-8
        becomes U+FFFD; an id outside ``[0, 262)`` or a value that is not an int is an error naming ``ids``."""
        values = _ids(ids)
        bad = [i for i in values if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise ConfigError(f"ids must be in [0, {VOCAB_SIZE}), got {bad[:5]}")
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


class ARBytesTokenizer:
    """UTF-8 bytes <-> the Perceiver AR byte ids: PAD 0, EOS 1, SOS 2, byte ``b`` -> ``b + 3``; stateless."""

    pad_id, eos_id, sos_id = AR_PAD_ID, AR_EOS_ID, AR_SOS_ID
    byte_offset = AR_BYTE_OFFSET
    vocab_size = AR_VOCAB_SIZE

    def encode(self, text: str | bytes, *, sos: bool = False, eos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text`` (or raw bytes) -> ids ``b + 3``, optionally framed by SOS / EOS."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return ([AR_SOS_ID] if sos else []) + [b + AR_BYTE_OFFSET for b in data] + ([AR_EOS_ID] if eos else [])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Ids (a sequence of ints or a 1-D integer tensor) -> text: special ids (< 3) and ids beyond the vocabulary
        are dropped, invalid UTF-8 becomes U+FFFD; a value that is not an int is an error naming ``ids``."""
        data = bytes(i - AR_BYTE_OFFSET for i in _ids(ids) if AR_BYTE_OFFSET <= i < AR_VOCAB_SIZE)
        return data.decode("utf-8", errors="replace")
