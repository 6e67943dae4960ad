"""Numerical parity with HF ``transformers`` ``PerceiverForMaskedLM`` and ``PerceiverForSequenceClassification``.

Small random-weight HF models are mapped with :func:`hf_to_perceivers_state_dict` and loaded strictly
into :class:`PerceiverIOLanguage`. HF ignores the decoder query mask (docs/checkpoints.md, HF-5) and
always decodes ``max_position_embeddings`` queries (item 17), so MLM logits are compared at the real
(non-padded) positions of a padded batch; padded positions are shown to differ.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceivers import (  # noqa: E402
    DecoderConfig,
    EncoderConfig,
    PerceiverIOConfig,
    PerceiverIOLanguage,
    TextPreprocessorConfig,
)
from perceivers.converters.hf_keys import hf_to_perceivers_state_dict  # noqa: E402
from perceivers.tokenizers import BytesTokenizer  # noqa: E402

TOL = 1e-5
D_MODEL, D_LATENTS, NUM_LATENTS, SELF_LAYERS, MAX_LEN, NUM_LABELS = 16, 32, 8, 2, 64, 3
TEXTS = ["Perceiver IO reads bytes: naïve café, 東京, ☕!", "short one"]


def _hf_config():
    return transformers.PerceiverConfig(
        d_model=D_MODEL, d_latents=D_LATENTS, num_latents=NUM_LATENTS, num_blocks=1,
        num_self_attends_per_block=SELF_LAYERS, num_self_attention_heads=2, num_cross_attention_heads=2,
        qk_channels=16, v_channels=D_LATENTS, max_position_embeddings=MAX_LEN, vocab_size=262,
        num_labels=NUM_LABELS, hidden_act="gelu_pytorch_tanh", attention_probs_dropout_prob=0.0,
    )


def _randomised(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial, so a mis-mapped one changes the logits
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _our_config(mlm: bool) -> PerceiverIOConfig:
    if mlm:  # HF hard-codes the MLM decoder: 8 heads, qk 8*32, v = d_model, no query residual
        decoder = DecoderConfig(type="basic", num_outputs=262, output_index_dims=(MAX_LEN,), num_query_channels=D_MODEL,
                                num_heads=8, qk_channels=256, v_channels=D_MODEL, use_query_residual=False,
                                final_project=False)
    else:
        decoder = DecoderConfig(type="classification", num_outputs=NUM_LABELS, num_query_channels=D_LATENTS,
                                use_query_residual=True)
    return PerceiverIOConfig(
        preprocessor=TextPreprocessorConfig(vocab_size=262, num_channels=D_MODEL, max_seq_len=MAX_LEN),
        encoder=EncoderConfig(num_latents=NUM_LATENTS, num_latent_channels=D_LATENTS, num_blocks=1,
                              num_self_attends_per_block=SELF_LAYERS, num_cross_attend_heads=2,
                              num_self_attend_heads=2, qk_channels=16, v_channels=D_LATENTS),
        decoder=decoder, activation="gelu_tanh",
    )


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    out = {}
    for head, mlm in (("PerceiverForMaskedLM", True), ("PerceiverForSequenceClassification", False)):
        hf = _randomised(getattr(transformers, head)(_hf_config()))
        ours = PerceiverIOLanguage(_our_config(mlm)).eval()
        ours.load_state_dict(hf_to_perceivers_state_dict(hf.state_dict(), num_self_attends_per_block=SELF_LAYERS,
                                                         head=head), strict=True)
        out[head] = (hf, ours)
    return out


def _batch():
    return BytesTokenizer().batch(TEXTS, add_special_tokens=True)


def test_masked_lm_matches_hf_at_real_positions(pair):
    hf, ours = pair["PerceiverForMaskedLM"]
    ids, mask = _batch()
    with torch.no_grad():
        hf_logits = hf(inputs=ids, attention_mask=mask.long()).logits  # (B, MAX_LEN, 262): HF decodes every query
        our_logits = ours(ids, mask)  # (B, L, 262)
    assert hf_logits.shape == (2, MAX_LEN, 262) and our_logits.shape == (*ids.shape, 262)
    real = mask
    diff = (hf_logits[:, : ids.shape[1]][real] - our_logits[real]).abs().max().item()
    assert hf_logits.abs().max() > 0.1
    assert diff <= TOL, f"MLM max |logit diff| at real positions {diff:.3e} > {TOL}"
    # Padded positions: we honour the decoder query mask (official), HF does not.
    padded = (hf_logits[:, : ids.shape[1]][~real] - our_logits[~real]).abs().max().item()
    assert padded > 1e-3


def test_masked_lm_unpadded_matches_hf_everywhere(pair):
    hf, ours = pair["PerceiverForMaskedLM"]
    ids = torch.tensor([BytesTokenizer().encode(TEXTS[0], add_special_tokens=True)])
    with torch.no_grad():
        diff = (hf(inputs=ids).logits[:, : ids.shape[1]] - ours(ids)).abs().max().item()
    assert diff <= TOL, f"MLM max |logit diff| {diff:.3e} > {TOL}"


def test_sequence_classification_matches_hf(pair):
    hf, ours = pair["PerceiverForSequenceClassification"]
    ids, mask = _batch()
    with torch.no_grad():
        hf_logits = hf(inputs=ids, attention_mask=mask.long()).logits
        our_logits = ours(ids, mask)
    assert hf_logits.shape == our_logits.shape == (2, NUM_LABELS)
    diff = (hf_logits - our_logits).abs().max().item()
    assert hf_logits.abs().max() > 0.1
    assert diff <= TOL, f"classifier max |logit diff| {diff:.3e} > {TOL}"


def test_language_tables_are_strict(pair):
    hf, _ = pair["PerceiverForMaskedLM"]
    state = dict(hf.state_dict())
    del state["embedding_decoder.bias"]
    with pytest.raises(ValueError, match=r"embedding_decoder\.bias"):
        hf_to_perceivers_state_dict(state, num_self_attends_per_block=SELF_LAYERS, head="PerceiverForMaskedLM")
    with pytest.raises(ValueError, match="unexpected"):  # an MLM state through the classification table
        hf_to_perceivers_state_dict(hf.state_dict(), num_self_attends_per_block=SELF_LAYERS,
                                    head="PerceiverForSequenceClassification")
    with pytest.raises(ValueError, match="no key table"):
        hf_to_perceivers_state_dict(hf.state_dict(), num_self_attends_per_block=SELF_LAYERS, head="PerceiverForX")
