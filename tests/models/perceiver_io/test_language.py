"""Byte tokenizer, text preprocessor and the byte-level Perceiver IO language models."""

from __future__ import annotations

import pytest
import torch
from testkit.models import randomize_

from perceivers import (
    PerceiverIOConfig,
    PerceiverIOLanguage,
    TextPreprocessorConfig,
    from_pretrained,
)
from perceivers.models import create_model, get_config, get_entry
from perceivers.preprocessors.text import TextPreprocessor
from perceivers.tokenizers import MASK_ID, BytesTokenizer

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Ça coûte 5 € — naïve café",
    "Привет, мир! Γειά σου κόσμε",
    "東京は日本の首都です。한국어 텍스트",
    "مرحبا بالعالم · नमस्ते दुनिया",
    "emoji 🙂👍🏽 and a ZWJ family 👨‍👩‍👧",
    "",
]


# ---------------------------------------------------------------------------------------------- tokenizer


def test_official_ids():
    tok = BytesTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3, 4, 5)
    assert tok.vocab_size == 262
    assert tok.encode(b"\x00\xff") == [6, 261]
    assert tok.encode("a", add_special_tokens=True) == [4, ord("a") + 6, 5]
    assert tok.encode("x[MASK]y", special_tokens_in_text=True) == [ord("x") + 6, MASK_ID, ord("y") + 6]
    assert tok.encode("x[MASK]") == [b + 6 for b in b"x[MASK]"]


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_roundtrip_and_decode_drops_specials(text):
    tok = BytesTokenizer()
    ids = tok.encode(text, add_special_tokens=True)
    assert len(ids) == len(text.encode("utf-8")) + 2
    assert tok.decode(ids) == text
    assert tok.decode([0, 1, 2, 3] + tok.encode(text) + [5]) == text


def test_decode_invalid_utf8_is_replaced_and_bad_ids_raise():
    tok = BytesTokenizer()
    assert tok.decode([0xC3 + 6, ord("a") + 6]) == "\ufffda"
    with pytest.raises(ValueError, match=r"\[0, 262\)"):
        tok.decode([262])


def test_ids_equal_hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    hf = transformers.PerceiverTokenizer()
    tok = BytesTokenizer()
    for text in MULTILINGUAL + ["fill [MASK][MASK] here [SEP]"]:
        assert hf(text)["input_ids"] == tok.encode(text, add_special_tokens=True, special_tokens_in_text=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, special_tokens_in_text=True)
        assert hf.decode(tok.encode(text), skip_special_tokens=True) == tok.decode(tok.encode(text))
    assert len(hf) == tok.vocab_size


def test_batch_pads_to_longest_with_mask():
    ids, mask = BytesTokenizer().batch(["héllo", "a", ""], add_special_tokens=True)
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [8, 3, 2]
    assert (ids[~mask] == 0).all() and ids[1, :3].tolist() == [4, ord("a") + 6, 5]
    with pytest.raises(ValueError, match="max_length=4"):
        BytesTokenizer().batch(["hello"], max_length=4)
    with pytest.raises(TypeError, match="sequence"):
        BytesTokenizer().batch("hello")


def test_text_preprocessor_adds_positions():
    prep = TextPreprocessor(TextPreprocessorConfig(num_channels=4, max_seq_len=10))
    ids = torch.tensor([[6, 7, 8]])
    tokens, emb = prep(ids)
    assert torch.equal(emb, prep.embedding.weight[ids])
    assert torch.allclose(tokens, emb + prep.position.pos_embs[:3])
    with pytest.raises(ValueError, match="max_seq_len=10"):
        prep(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 262\)"):
        prep(torch.tensor([[262]]))
    with pytest.raises(TypeError, match="integer"):
        prep(torch.zeros(1, 3))


# ----------------------------------------------------------------------------------------------- models


def test_registered_parameter_counts_on_meta():
    for name, count in (("perceiver-io-language-mlm", 201_108_230), ("perceiver-io-language-classifier", 206_098_690)):
        m = create_model(name, device="meta")
        assert all(p.is_meta for p in m.parameters())
        assert m.num_parameters() == count == get_entry(name).num_parameters
    mlm = create_model("perceiver-io-language-mlm", device="meta")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(mlm.encoder.cross_attends) == 6_434_816 and count(mlm.encoder.self_attends[0]) == 7_219_712
    assert count(mlm.decoder.cross_attend) == 3_286_016 and mlm.embedding_decoder.bias.numel() == 262


def _debug(**overrides) -> PerceiverIOLanguage:
    return randomize_(create_model("perceiver-io-language-debug", **overrides), 0.3).eval()


@pytest.mark.parametrize("classifier", [False, True])
def test_padding_invariance(classifier):
    """L unpadded tokens == the same tokens padded to a longer length with a mask, at the real positions."""
    decoder = {"type": "classification", "num_outputs": 3, "num_query_channels": 32, "output_index_dims": (1,),
               "final_project": True, "use_query_residual": True} if classifier else {}
    model = _debug(decoder=decoder)
    ids = torch.randint(6, 262, (2, 11))
    padded = torch.cat([ids, torch.randint(0, 262, (2, 30))], dim=1)  # garbage after position 11
    mask = torch.zeros(2, 41, dtype=torch.bool)
    mask[:, :11] = True
    with torch.no_grad():
        short, long = model(ids), model(padded, mask)
    if classifier:
        assert short.shape == long.shape == (2, 3)
        assert (short - long).abs().max() <= 1e-5
    else:
        assert short.shape == (2, 11, 262) and long.shape == (2, 41, 262)
        assert (short - long[:, :11]).abs().max() <= 1e-5


def test_padded_positions_follow_the_query_mask():
    """Official decoder query mask: a padded output position ignores the latents (attention result 0)."""
    model = _debug()
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        a = model(torch.randint(6, 262, (1, 8)), mask)
        b = model(torch.randint(6, 262, (1, 8)), mask)
    assert torch.allclose(a[:, 5:], b[:, 5:], atol=1e-6)
    assert not torch.allclose(a[:, :5], b[:, :5], atol=1e-3)


def test_logits_are_tied_to_the_byte_embedding():
    model = _debug()
    ids = torch.randint(6, 262, (1, 4))
    with torch.no_grad():
        before = model(ids)
        model.embedding_decoder.bias[10] += 5.0
        after = model(ids)
    assert torch.allclose(after[..., 10] - before[..., 10], torch.full((1, 4), 5.0))
    assert "embedding_decoder.bias" in model.state_dict() and not any(
        k.startswith("embedding_decoder") and k != "embedding_decoder.bias" for k in model.state_dict())


def test_save_and_load_roundtrip(tmp_path):
    model = _debug()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded, PerceiverIOLanguage) and loaded.config == model.config
    ids = torch.randint(0, 262, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert PerceiverIOConfig.from_dict(model.config.to_dict()) == model.config


def test_config_errors():
    cfg = get_config("perceiver-io-language-debug")
    with pytest.raises(ValueError, match=r"output_index_dims.*\(64,\)"):
        cfg.replace(decoder={"output_index_dims": (32,)})
    with pytest.raises(ValueError, match="final_project"):
        cfg.replace(decoder={"final_project": True})
    with pytest.raises(ValueError, match="num_query_channels"):
        cfg.replace(decoder={"num_query_channels": 8})
    with pytest.raises(ValueError, match="decoder.type"):
        cfg.replace(decoder={"type": "projection", "final_project": True})
    with pytest.raises(ValueError, match="layout"):
        cfg.replace(encoder={"layout": "interleaved"})
    with pytest.raises(TypeError, match="PerceiverIOConfig"):
        PerceiverIOLanguage(object())
    with pytest.raises(ValueError, match="returns a PerceiverIOFlow"):
        PerceiverIOLanguage(get_config("perceiver-io-flow-debug"))


def test_input_errors():
    model = _debug()
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5))
