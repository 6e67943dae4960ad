"""Generation: cached logits equal uncached forward passes (across resets and sliding windows), sampling
filters, seeded reproducibility, EOS, batching, beam search against exhaustive search, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from testkit.perceiver_ar import make, randomized, tiny_ar

from perceivers.core.errors import UserError
from perceivers.generation import CachedDecoder, PerceiverARCache, generate
from perceivers.generation.kv_cache import LayerKVCache
from perceivers.generation.layout import FusedQKVAttention, column_major_linears
from perceivers.generation.sampling import (
    process_logits,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from perceivers.layers.attention import Attention
from perceivers.models.perceiver_ar.model import PerceiverAR

POSITIONS = ["rotary", "absolute"]
pytestmark = pytest.mark.usefixtures("one_thread")



def schedule(prompt_len: int, num_steps: int, *, s: int, c: int) -> list[tuple[int, int, int]]:
    """``(T, w, a)`` for the logits of each step, written from the documented rule: a full pass with
    ``s/2`` latents over the window ``[w, T)`` (``w = T - (c - s/2)`` when ``T > c``); then each token is
    added to the caches, unless they already hold ``s`` latents or ``c`` inputs: then a full pass again."""
    out = []
    t, lat, cross = prompt_len, None, None
    for _ in range(num_steps):
        if lat is None or lat == s or cross == c:
            w = t - (c - s // 2) if t > c else 0
            a = max(w, t - s // 2)
            lat, cross = s // 2, max(t - w, s // 2)
        else:
            lat, cross = lat + 1, cross + 1
        out.append((t, w, a))
        t += 1
    return out


def reference_logits(model: PerceiverAR, seq: torch.Tensor, t: int, w: int, a: int) -> torch.Tensor:
    """Uncached logits predicting token ``t`` of ``seq: (L,)``."""
    return model(seq[None, w:t], num_latents=t - a)[0, -1]


# ------------------------------------------------------------------------------ cache == no cache

@pytest.mark.parametrize("position", POSITIONS)
def test_model_cache_chunks_match_uncached_forward(position):
    """Full pass over padded prompts, then a 3-token chunk, then single tokens."""
    model = make(position)
    seqs = torch.randint(0, 11, (2, 16))
    lengths = [9, 6]
    prompt = seqs[:, :9].clone()
    prompt[1, 6:] = 0
    cache = PerceiverARCache.for_model(model, batch_size=2, latent_capacity=12)
    first = model(prompt, torch.tensor(lengths), num_latents=4, cache=cache)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(first[b, -1], reference_logits(model, seqs[b], n, 0, n - 4), rtol=1e-5, atol=1e-5)
    feeds = [3, 1, 1, 1]
    done = 0
    for size in feeds:
        chunk = torch.stack([seqs[b, n + done:n + done + size] for b, n in enumerate(lengths)])
        out = model(chunk, cache=cache)
        assert out.shape == (2, size, 11)
        for b, n in enumerate(lengths):
            for j in range(size):
                t = n + done + j + 1
                torch.testing.assert_close(out[b, j], reference_logits(model, seqs[b], t, 0, n - 4),
                                           rtol=1e-5, atol=1e-5)
        done += size
    assert cache.num_tokens.tolist() == [9 + 6, 6 + 6]


@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_matches_uncached_across_resets_and_sliding_window(position):
    """S = 4 latent slots (a reset every 2 tokens) and C = 24 inputs; 36 teacher-forced tokens run
    past C, so later full passes keep a sliding window. Max |cached - uncached| stays below 1e-5."""
    model = make(position)
    seq = torch.randint(0, 11, (40,))
    prompt_len, steps, s = 5, 36, 4
    decoder = CachedDecoder(model, seq[None, :prompt_len], torch.tensor([prompt_len]), max_new_tokens=steps,
                            cache_latents=s)
    plan = schedule(prompt_len, steps, s=s, c=24)
    worst = 0.0
    with torch.no_grad():
        logits = decoder.full_pass()
        for i, (t, w, a) in enumerate(plan):
            assert (int(decoder.lengths[0]), int(decoder.window_start[0]), int(decoder.latent_start[0])) == (t, w, a)
            worst = max(worst, float((logits[0] - reference_logits(model, seq, t, w, a)).abs().max()))
            if i + 1 < steps:
                logits = decoder.append(seq[t:t + 1])
    assert worst < 1e-5, worst
    assert decoder.num_full_passes >= 10 and max(w for _, w, _ in plan) > 0  # resets and a sliding window


def test_generate_logits_match_uncached_with_input_cache_refills():
    """generate() itself (greedy, batch of 2 prompts): every step's logits equal uncached passes."""
    model = make("rotary")
    out = generate(model, [[1, 2, 3], [4, 5, 6, 7, 8, 9]], max_new_tokens=25, cache_latents=6, output_logits=True)
    assert out.logits.shape == (2, 25, 11)
    for b, prompt_len in enumerate((3, 6)):
        seq = out.sequences[b, :out.lengths[b]]
        for step, (t, w, a) in enumerate(schedule(prompt_len, 25, s=6, c=24)):
            if t > 24 - 3:
                break  # from here the batch resets when its widest window is full, not as a lone prompt
            torch.testing.assert_close(out.logits[b, step], reference_logits(model, seq, t, w, a), rtol=1e-5, atol=1e-5)


def test_batched_prompts_equal_single_prompts():
    model = make("absolute", seed=3)
    prompts = [[3, 1], [2, 7, 7, 1, 9, 4, 4], [5, 5, 0, 8, 1]]
    batch = generate(model, prompts, max_new_tokens=8, cache_latents=6, output_logits=True)
    assert batch.sequences.shape == (3, 15) and batch.lengths.tolist() == [10, 15, 13]
    for b, p in enumerate(prompts):
        solo = generate(model, [p], max_new_tokens=8, cache_latents=6, output_logits=True)
        assert torch.equal(solo.sequences[0], batch.sequences[b, :batch.lengths[b]])
        torch.testing.assert_close(solo.logits[0], batch.logits[b], rtol=1e-5, atol=1e-5)
    assert (batch.sequences[0, 10:] == 0).all()  # right-padded with pad_token_id


# ------------------------------------------------------------------------------------- sampling

def test_top_k_filter_keeps_k_largest_and_ties():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, False, False]]
    assert torch.isfinite(top_k_filter(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 2)).sum() == 2
    assert torch.isfinite(top_k_filter(torch.tensor([[2.0, 2.0, 2.0, 0.0]]), 2)).sum() == 3  # ties kept
    torch.testing.assert_close(top_k_filter(logits, 5), logits)


@pytest.mark.parametrize("p, expected", [(0.4, [1]), (0.55, [1, 2]), (0.75, [1, 2]), (0.85, [1, 2, 0]),
                                         (0.99, [1, 2, 0, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_filter_keeps_smallest_set_reaching_p(p, expected):
    probs = torch.tensor([[0.15, 0.5, 0.3, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), p))[0]
    assert sorted(kept.nonzero().flatten().tolist()) == sorted(expected)


def test_filters_act_on_untempered_logits_then_temperature():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    hot = process_logits(logits, temperature=10.0, top_p=0.75)
    assert torch.isfinite(hot).tolist() == [[True, True, False, False]]  # nucleus of the raw distribution
    torch.testing.assert_close(hot[0, :2], logits[0, :2] / 10.0)
    torch.testing.assert_close(process_logits(logits, temperature=0.5), logits * 2.0)


def test_sampling_frequencies_follow_the_processed_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits.expand(1000, -1), do_sample=True, temperature=0.7, top_k=3,
                                     generator=g) for _ in range(4)]).flatten()
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    expected = torch.softmax(process_logits(logits, temperature=0.7, top_k=3), dim=-1)[0]
    assert freq[3:].sum() == 0
    assert (freq - expected).abs().max() < 0.03
    assert torch.equal(sample_next(logits, do_sample=False), torch.tensor([0]))


def test_generated_tokens_respect_filters_and_greedy_is_argmax():
    model = make("rotary", seed=1)
    prompts = [[1, 2, 3, 4], [6, 5]]
    greedy = generate(model, prompts, max_new_tokens=10, output_logits=True)
    for b in range(2):
        gen = greedy.sequences[b, len(prompts[b]):greedy.lengths[b]]
        assert torch.equal(gen, greedy.logits[b].argmax(-1))
    g = torch.Generator().manual_seed(1)
    sampled = generate(model, prompts, max_new_tokens=10, do_sample=True, top_k=2, generator=g, output_logits=True)
    for b in range(2):
        gen = sampled.sequences[b, len(prompts[b]):sampled.lengths[b]]
        top2 = sampled.logits[b].topk(2, dim=-1).indices
        assert (top2 == gen[:, None]).any(-1).all()


def test_seeded_sampling_is_reproducible():
    model = make("absolute", seed=2)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, [[1, 2, 3]], max_new_tokens=20, do_sample=True, temperature=1.5, top_p=0.95,
                        generator=g).sequences

    first = run(7)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))


def test_eos_stops_each_example_and_pads():
    model = make("rotary", seed=4)
    prompts = [[1, 2, 3], [4, 5]]
    free = generate(model, prompts, max_new_tokens=12)
    gen0 = free.sequences[0, 3:free.lengths[0]].tolist()
    eos = gen0[3]
    stop = gen0.index(eos)
    out = generate(model, prompts, max_new_tokens=12, eos_token_id=eos, pad_token_id=10)
    assert out.num_generated[0] == stop + 1 and out.sequences[0, 3 + stop] == eos
    assert (out.sequences[0, 3 + stop + 1:] == 10).all()
    gen1 = free.sequences[1, 2:free.lengths[1]].tolist()
    expected1 = gen1[:gen1.index(eos) + 1] if eos in gen1 else gen1
    assert out.sequences[1, 2:out.lengths[1]].tolist() == expected1


def test_list_and_tensor_prompts_agree_and_zero_new_tokens():
    model = make("rotary")
    a = generate(model, [[1, 2]], max_new_tokens=5)
    b = generate(model, torch.tensor([[1, 2]]), max_new_tokens=5)
    assert torch.equal(a.sequences, b.sequences)
    padded = generate(model, torch.tensor([[1, 2, 9], [3, 0, 0]]), torch.tensor([3, 1]), max_new_tokens=0)
    assert padded.sequences.tolist() == [[1, 2, 9], [3, 0, 0]] and padded.lengths.tolist() == [3, 1]
    assert generate(model, torch.tensor([4, 5]), max_new_tokens=2).sequences.shape == (1, 4)  # 1-D prompt


def test_streamer_sees_every_token_and_is_refused_with_beam_search():
    model = make("rotary")
    seen: list[list[int]] = []
    out = generate(model, [[2, 10, 3], [4]], max_new_tokens=5, streamer=lambda t: seen.append(t.tolist()))
    assert [s[0] for s in seen] == out.sequences[0, 3:].tolist()
    assert [s[1] for s in seen] == out.sequences[1, 1:6].tolist()
    with pytest.raises(ValueError, match="beam"):
        generate(model, [[2, 10]], max_new_tokens=2, num_beams=2, streamer=print)


# ------------------------------------------------------------------------------------ beam search

def test_beam_search_with_one_beam_is_greedy():
    model = make("rotary", seed=5)
    greedy = generate(model, [[1, 2, 3], [7]], max_new_tokens=9)
    beam = generate(model, [[1, 2, 3], [7]], max_new_tokens=9, num_beams=1)
    assert torch.equal(greedy.sequences, beam.sequences)


@pytest.mark.parametrize("position", POSITIONS)
def test_beam_search_finds_the_exhaustive_best(position):
    """Vocabulary 5, 3 new tokens, 25 beams: beam search is exact; S = 2 resets the caches every other
    step, so the cache and token history must be reordered correctly."""
    model = randomized(PerceiverAR(tiny_ar(vocab_size=5, position_encoding=position)), seed=6)
    prompt = torch.tensor([1, 4, 2])
    out = generate(model, [prompt.tolist()], max_new_tokens=3, num_beams=25, cache_latents=2)
    plan = schedule(3, 3, s=2, c=24)
    best, best_seq, memo = -math.inf, None, {}
    with torch.no_grad():
        for cont in itertools.product(range(5), repeat=3):
            seq = torch.cat([prompt, torch.tensor(cont)])
            score = 0.0
            for t, w, a in plan:
                key = tuple(seq[:t].tolist())
                if key not in memo:
                    memo[key] = torch.log_softmax(reference_logits(model, seq, t, w, a), -1)
                score += float(memo[key][seq[t]])
            if score > best:
                best, best_seq = score, seq
    assert torch.equal(out.sequences[0], best_seq)
    assert math.isclose(float(out.scores[0]) * 3, best, rel_tol=1e-4, abs_tol=1e-4)  # length_penalty 1


def test_beam_search_eos_hypotheses():
    model = make("rotary", seed=8)
    free = generate(model, [[1, 2]], max_new_tokens=6, num_beams=3)
    eos = int(free.sequences[0, 3])
    out = generate(model, [[1, 2], [3, 4, 5]], max_new_tokens=6, num_beams=3, eos_token_id=eos)
    for b in range(2):
        gen = out.sequences[b, out.lengths[b] - out.num_generated[b]:out.lengths[b]].tolist()
        assert eos not in gen[:-1] and (gen[-1] == eos or len(gen) == 6)


# ------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompt=[[1, 11]]), ValueError, "prompt"),
    (dict(prompt=[[1, -1]]), ValueError, "prompt"),
    (dict(prompt=[list(range(10)) * 3]), ValueError, "prompt"),
    (dict(prompt=[[]]), ValueError, "prompt"),
    (dict(prompt=[]), TypeError, "prompt"),
    (dict(prompt=torch.zeros(1, 0, dtype=torch.long)), ValueError, "prompt"),
    (dict(prompt=torch.tensor([[1, 2]]), prompt_lengths=[0]), ValueError, "prompt"),
    (dict(prompt=torch.tensor([[1.0, 2.0]])), TypeError, "prompt"),
    (dict(prompt="hello"), TypeError, "prompt"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(cache_latents=3), ValueError, "cache_latents"),
    (dict(cache_latents=26), ValueError, "cache_latents"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2, do_sample=True), ValueError, "num_beams"),
    (dict(eos_token_id=11), ValueError, "eos_token_id"),
    (dict(generator=0), TypeError, "generator"),
    (dict(streamer=0), TypeError, "streamer"),
    (dict(streamer=print, num_beams=2), ValueError, "streamer"),
])
def test_generate_errors_name_the_argument(kwargs, exc, match):
    """A caller's bad argument is a ConfigError / ConfigTypeError (the command line prints it as one line)."""
    model = make("rotary")
    args = dict(prompt=[[1, 2]], max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match) as err:
        generate(model, args.pop("prompt"), **args)
    assert isinstance(err.value, UserError)


def test_generate_past_the_position_grid_is_a_user_error():
    from perceivers.models import create_model

    model = create_model("perceiver-ar-debug", position_encoding="absolute", position_grid=(2, 2, 3),
                         max_context_length=12, num_latents=4).eval()
    assert generate(model, [[1, 2]], max_new_tokens=10).sequences.shape == (1, 12)  # fills the grid exactly
    with pytest.raises(UserError, match="max_new_tokens=11 would run past the position grid .* at most 10 new"):
        generate(model, [[1, 2]], max_new_tokens=11)


def test_training_mode_and_cache_misuse_are_rejected():
    model = make("rotary").train()
    with pytest.raises(ValueError, match="eval"):
        generate(model, [[1, 2]], max_new_tokens=2)
    cache = PerceiverARCache.for_model(model, batch_size=1)
    with pytest.raises(ValueError, match="eval"):
        model(torch.tensor([[1, 2]]), num_latents=2, cache=cache)
    model.eval()
    model(torch.tensor([[1, 2, 3]]), num_latents=2, cache=cache)
    with pytest.raises(ValueError, match="num_latents"):
        model(torch.tensor([[4, 5]]), num_latents=1, cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.tensor([[4], [5]]), cache=cache)
    with pytest.raises(ValueError, match="capacity"):
        LayerKVCache(0)


# ------------------------------------------------------------------------------ decode speed paths

def test_cache_reports_all_valid_history_as_none():
    """An all-valid history is returned as None (decode then runs unmasked); one invalid entry makes
    it an explicit mask until the next reset."""
    cache = LayerKVCache(6)
    k = torch.randn(1, 2, 2, 4)
    assert cache.update(k, k, None)[2] is None
    assert cache.update(k, k, torch.tensor([[True, False]]))[2] is None  # the history before this call
    past = cache.update(k[:, :, :1], k[:, :, :1], None)[2]
    assert past is not None and past.tolist() == [[True, True, True, False]]
    cache.reset()
    assert cache.update(k, k, None)[2] is None


def test_decode_layout_swaps_in_fused_attention_relayouts_expanding_weights_and_restores_both():
    model = make("rotary")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    layer = model.self_attends[0]
    attn = layer.attention
    fc1, fc2 = layer.mlp.fc1.weight, layer.mlp.fc2.weight
    assert fc1.shape[0] > fc1.shape[1] and fc2.shape[0] < fc2.shape[1]
    with column_major_linears(model):
        fused = layer.attention
        assert isinstance(fused, FusedQKVAttention) and fused.with_query and fused.q_proj is attn.q_proj
        cross = model.cross_attend.attention  # queries 12 channels, keys 16: only k and v are fused
        assert isinstance(cross, FusedQKVAttention) and not cross.with_query
        assert fc1.stride() == (1, fc1.shape[0]) and fc2.is_contiguous() and attn.o_proj.weight.is_contiguous()
        q, k = attn.q_proj.weight, attn.k_proj.weight  # views into one column-major (3C, C) block
        assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() and not q.is_contiguous()
        inside = dict(model.named_parameters())  # the same Parameter objects under the same names
        assert inside.keys() == params.keys() and all(inside[n] is p for n, p in params.items())
        state = model.state_dict()
        assert state.keys() == before.keys() and all(torch.equal(before[n], t) for n, t in state.items())
    assert layer.attention is attn and type(attn) is Attention
    assert fc1.is_contiguous() and attn.q_proj.weight.is_contiguous()
    with pytest.raises(RuntimeError, match="boom"), column_major_linears(model):
        raise RuntimeError("boom")
    assert layer.attention is attn and all(type(m) is not FusedQKVAttention for m in model.modules())
    assert all(p.is_contiguous() for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fused_qkv_attention_matches_uses_the_block_and_never_bypasses_autograd():
    torch.manual_seed(0)
    for q_in in (6, 8):  # same width: q, k, v fused; different: k, v only
        attn = Attention(q_in_channels=q_in, kv_in_channels=8, qk_channels=8, v_channels=4, output_channels=5,
                         num_heads=2)
        x, xq = torch.randn(2, 3, 8), torch.randn(2, 4, q_in)
        calls = []
        attn.k_proj.register_forward_hook(lambda *_: calls.append(1))
        with torch.no_grad():
            ref_self = attn(x, x) if q_in == 8 else None
            ref_cross = attn(xq, x)
            calls.clear()
            fused = FusedQKVAttention.from_attention(attn)
            assert fused.with_query == (q_in == 8) and fused.block.shape == (8 * (q_in == 8) + 8 + 4, 8)
            torch.testing.assert_close(fused(xq, x), ref_cross, rtol=1e-6, atol=1e-6)
            if ref_self is not None:
                torch.testing.assert_close(fused(x, x), ref_self, rtol=1e-6, atol=1e-6)
            assert not calls  # keys come from the fused block, not from k_proj
        fused(xq, x).sum().backward()  # with autograd the parameters themselves are used
        assert calls and attn.k_proj.weight.grad is not None and attn.k_proj.bias.grad is not None
        fused.release()
        assert attn.k_proj.weight.is_contiguous() and attn.q_proj.weight.is_contiguous()


@pytest.mark.parametrize("position", POSITIONS)
def test_column_major_decode_matches_the_plain_layout(position):
    model = make(position)
    prompt = torch.randint(0, 11, (2, 7))
    fast = generate(model, prompt, max_new_tokens=6, output_logits=True)
    plain = generate(model, prompt, max_new_tokens=6, output_logits=True, column_major_decode=False)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-5, atol=1e-5)


def test_decode_layout_keeps_bf16_weights_row_major_and_gives_back_separate_weights():
    """bf16 matrix-vector products are fast only row-major: the fused block is row-major, fc1 untouched; on exit
    the projections own separate storage again (a state_dict with shared storage could not be saved)."""
    model = make("rotary").to(torch.bfloat16)
    layer = model.self_attends[0]
    prompt = torch.randint(0, 11, (2, 7))
    with column_major_linears(model):
        fused = layer.attention
        assert isinstance(fused, FusedQKVAttention) and fused.block.is_contiguous()
        assert layer.mlp.fc1.weight.is_contiguous()
    attn = layer.attention
    pointers = {p.weight.untyped_storage().data_ptr() for p in (attn.q_proj, attn.k_proj, attn.v_proj)}
    assert len(pointers) == 3
    fast = generate(model, prompt, max_new_tokens=6, output_logits=True)
    plain = generate(model, prompt, max_new_tokens=6, output_logits=True, column_major_decode=False)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=2e-2, atol=2e-2)
