"""The two byte tokenizers in perceivers.tokenizers: their special ids (the module's table), round trips, and the
module's place at the bottom of the package (it imports only perceivers.core)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import perceivers.tokenizers as tk
from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.tokenizers import ARBytesTokenizer, BytesTokenizer


def test_special_ids_match_the_table():
    io, ar = BytesTokenizer(), ARBytesTokenizer()
    assert (io.pad_id, io.bos_id, io.eos_id, io.mask_id, io.cls_id, io.sep_id, io.vocab_size) == (0, 1, 2, 3, 4, 5, 262)
    assert (tk.PAD_ID, tk.BOS_ID, tk.EOS_ID, tk.MASK_ID, tk.CLS_ID, tk.SEP_ID) == (0, 1, 2, 3, 4, 5)
    assert (tk.NUM_SPECIAL, tk.VOCAB_SIZE) == (6, 262)
    assert (ar.pad_id, ar.eos_id, ar.sos_id, ar.byte_offset, ar.vocab_size) == (0, 1, 2, 3, 259)
    assert (tk.AR_PAD_ID, tk.AR_EOS_ID, tk.AR_SOS_ID, tk.AR_BYTE_OFFSET, tk.AR_VOCAB_SIZE) == (0, 1, 2, 3, 259)
    assert io.eos_id != ar.eos_id  # the reason each name says which tokenizer it belongs to
    for line in ("0         ``[PAD]`` (``PAD_ID``)                      PAD (``AR_PAD_ID``)",
                 "1         ``[BOS]`` (``BOS_ID``)                      EOS (``AR_EOS_ID``)",
                 "2         ``[EOS]`` (``EOS_ID``)                      SOS (``AR_SOS_ID``)"):
        assert line in tk.__doc__


def test_both_encode_bytes_after_their_specials_and_round_trip():
    text = "def f(x):\n    return 'π' * x\n"
    io, ar = BytesTokenizer(), ARBytesTokenizer()
    assert io.encode("A") == [65 + 6] and ar.encode("A") == [65 + 3]
    assert io.encode("A", add_special_tokens=True) == [tk.CLS_ID, 71, tk.SEP_ID]
    assert ar.encode("é", sos=True, eos=True) == [tk.AR_SOS_ID, 0xC3 + 3, 0xA9 + 3, tk.AR_EOS_ID]
    assert io.decode(io.encode(text, add_special_tokens=True)) == text
    assert ar.decode(ar.encode(text, sos=True, eos=True)) == text
    assert ar.decode(torch.tensor([0, 2, 3 + 104, 3 + 105, 1])) == "hi"  # special ids dropped
    assert io.encode("[MASK]x", special_tokens_in_text=True) == [tk.MASK_ID, ord("x") + 6]
    assert ar.decode([3 + 0xFF]) == "\ufffd"  # invalid UTF-8 replaced


def test_tokenizers_import_only_the_core():
    tree = ast.parse(Path(tk.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in imported if m.split(".")[0] == "perceivers"}
    assert all(m == "perceivers.core" or m.startswith("perceivers.core.") for m in ours), ours


_BAD_DECODE_INPUTS = [None, "abc", b"ab", 3, True, [1, "a"], [1.5], [True, 7], [[1, 2], [3, 4]], [1, None],
                      torch.rand(3), torch.tensor([True]), torch.tensor([[7, 8]]), torch.tensor(7)]


@pytest.mark.parametrize("tokenizer", [BytesTokenizer(), ARBytesTokenizer()], ids=["io", "ar"])
@pytest.mark.parametrize("ids", _BAD_DECODE_INPUTS, ids=[repr(v)[:20] for v in _BAD_DECODE_INPUTS])
def test_decode_of_a_bad_type_names_ids(tokenizer, ids):
    with pytest.raises((ConfigError, ConfigTypeError), match=r"ids(\[\d+\])? must be"):
        tokenizer.decode(ids)


@pytest.mark.parametrize("ids", [[7, 8], (7, 8), range(7, 9), torch.tensor([7, 8], dtype=torch.int8),
                                 torch.tensor([7, 8], dtype=torch.uint8), np.array([7, 8]), [np.int64(7), 8]],
                         ids=["list", "tuple", "range", "int8", "uint8", "numpy", "numpy-ints"])
def test_decode_accepts_every_integer_sequence(ids):
    assert BytesTokenizer().decode(ids) == "\x01\x02"
    assert ARBytesTokenizer().decode(ids) == "\x04\x05"


def test_io_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ConfigError, match=r"ids must be in \[0, 262\), got \[300\]"):
        BytesTokenizer().decode([7, 300])
