"""Property tests: any small configuration and any input either works (finite output of the documented
shape) or is rejected with ValueError / TypeError and a non-empty message; never another exception or NaN.
Valid configurations and fault-free inputs must work: the tests count them, so validation that refused
everything would fail.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from perceivers import PerceiverIO
from perceivers.core.errors import UserError
from perceivers.layers.attention import Attention
from perceivers.models.perceiver_io.config import (
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIOConfig,
)

ACCEPTED = (ValueError, TypeError)
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


BAD_VALUES = st.sampled_from([0, -1, -3, 1.5, "2", None, True, 3, 5, 7, "bogus", (0, 2), (), 0.0, -0.5,
                              float("nan"), float("inf"), "False"])


def divisors(n: int, limit: int = 4) -> list[int]:
    return [h for h in range(1, limit + 1) if n % h == 0]


@st.composite
def configs(draw, *, corrupt: bool = True):
    """``(prep, encoder, decoder, top, corrupted)``: kwargs for the sub-configs and the top level, built
    inside the test. Mostly a valid configuration; with ``corrupt``, one time in three one or two fields get
    a random, possibly invalid value (0, negative, wrong type, unknown choice, a width that no longer divides
    the heads...) and ``corrupted`` is True. Without corruption the only constraint left unmodelled is
    :data:`LEGITIMATE_CONFIG_REFUSALS` (and ``corrupt=False`` draws one cross-attention head, so none)."""
    prep = None
    if draw(st.booleans()):
        prep_type = draw(st.sampled_from(["pixels", "patches", "conv1x1", "conv"]))
        s = {"conv": draw(st.sampled_from([4, 4, 16])), "patches": draw(st.sampled_from([1, 2, 4]))}.get(
            prep_type, draw(st.sampled_from([1, 1, 2, 3])))
        mult = s if prep_type == "patches" else 1
        in_ch = draw(st.integers(1, 3))
        num_ch = draw(st.integers(1, 6))
        pos = draw(st.sampled_from(["fourier", "fourier", "trainable", "none"]))
        after = draw(st.booleans())
        feat = {"pixels": in_ch, "patches": num_ch if after else in_ch * s * s}.get(prep_type, num_ch)
        add = draw(st.integers(0, 3)) == 0 and pos != "none"
        prep = dict(
            image_size=(mult * draw(st.integers(1, 8 // mult if mult < 8 else 1)),
                        mult * draw(st.integers(1, 8 // mult if mult < 8 else 1))),
            in_channels=in_ch, prep_type=prep_type, spatial_downsample=s, num_channels=num_ch,
            conv_after_patching=after, conv2d_use_batchnorm=draw(st.booleans()), position_encoding=pos,
            num_bands=draw(st.integers(1, 3)),
            max_resolution=draw(st.one_of(st.none(), st.tuples(st.integers(1, 8), st.integers(1, 8)))),
            concat_pos=draw(st.booleans()), sine_only=draw(st.booleans()),
            trainable_pos_channels=draw(st.integers(1, 5)),
            project_pos_dim=feat if add else draw(st.sampled_from([0, 0, 3])),
            concat_or_add_pos="add" if add else "concat",
            pos_init_scale=draw(st.sampled_from([0.02, 0.5])),
        )
    d = draw(st.sampled_from([4, 6, 8]))
    self_heads = draw(st.sampled_from(divisors(d)))
    qk = draw(st.one_of(st.none(), st.none(), st.sampled_from([self_heads * k for k in (1, 2, 3)])))
    v = draw(st.one_of(st.none(), st.none(), st.sampled_from([self_heads * k for k in (1, 2)])))
    encoder = dict(
        num_latents=draw(st.integers(1, 5)), num_latent_channels=d, num_blocks=draw(st.integers(1, 3)),
        num_self_attends_per_block=draw(st.integers(1, 2)),
        num_cross_attend_heads=draw(st.sampled_from([1, 1, 1, 1, 2] if corrupt else [1])),
        num_self_attend_heads=self_heads,
        cross_attend_widening_factor=draw(st.integers(1, 2)), self_attend_widening_factor=draw(st.integers(1, 2)),
        qk_channels=qk, v_channels=v,
        cross_attention_shape_for_attn=draw(st.sampled_from(["kv", "q"])),
        use_query_residual=draw(st.booleans()),
        dropout_prob=draw(st.sampled_from([0.0, 0.0, 0.3])),
        attention_dropout_prob=draw(st.sampled_from([0.0, 0.0, 0.5])),
        layout=draw(st.sampled_from(["io", "interleaved"])),
        latent_init_scale=draw(st.sampled_from([0.02, 1.0])),
    )
    dec_type = draw(st.sampled_from(["classification", "projection", "basic", "basic"]))
    dec_heads = draw(st.sampled_from(divisors(d)))
    pos = draw(st.sampled_from(["trainable", "fourier", "none"])) if dec_type == "basic" else "trainable"
    concat = draw(st.booleans()) or pos == "none" if dec_type == "basic" else False
    decoder = dict(
        type=dec_type, num_outputs=draw(st.integers(1, 4)),
        output_index_dims=tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))),
        position_encoding=pos, num_query_channels=draw(st.integers(1, 8)), num_bands=draw(st.integers(1, 3)),
        num_heads=dec_heads,
        qk_channels=draw(st.one_of(st.none(), st.none(), st.sampled_from([dec_heads * k for k in (1, 2)]))),
        v_channels=draw(st.one_of(st.none(), st.none(), st.sampled_from([dec_heads * k for k in (1, 3)]))),
        use_query_residual=draw(st.booleans()), concat_preprocessed_input=concat,
        final_project=draw(st.booleans()) if dec_type == "basic" else True,
        query_init_scale=draw(st.sampled_from([0.02, 1.0])),
    )
    if prep is not None and decoder["concat_preprocessed_input"] and dec_type == "basic":
        try:  # one query per input token: decode over the token grid
            decoder["output_index_dims"] = ImagePreprocessorConfig(**prep).grid
        except (ValueError, TypeError):
            pass
    top = dict(input_channels=None if prep is not None else draw(st.integers(1, 6)),
               activation=draw(st.sampled_from(["gelu_tanh", "gelu", "sq_relu", "relu"])))
    corrupted = corrupt and draw(st.integers(0, 2)) == 2
    if corrupted:  # one or two fields
        parts = {"prep": prep, "encoder": encoder, "decoder": decoder, "top": top}
        for _ in range(draw(st.integers(1, 2))):
            name = draw(st.sampled_from([k for k, v in parts.items() if v is not None]))
            field = draw(st.sampled_from(sorted(parts[name])))
            parts[name][field] = draw(BAD_VALUES)
    return prep, encoder, decoder, top, corrupted


# An uncorrupted configuration may still be refused for this reason: the cross-attention width is the
# input width (derived from the preprocessor), which two cross-attention heads may not divide.
LEGITIMATE_CONFIG_REFUSALS = ("must be divisible by num_cross_attend_heads",)
# Inputs the generator builds without a fault may still be refused for these reasons: BatchNorm in
# train mode needs more than one value per channel; concat_preprocessed_input needs M == O.
LEGITIMATE_REFUSALS = ("Expected more than 1 value per channel when training", "concat_preprocessed_input")
INPUT_FAULTS = ["batch0", "size", "channels", "rank", "dtype", "mask_shape", "mask_dtype", "points", "qmask"]


@st.composite
def inputs(draw, cfg: PerceiverIOConfig, model: PerceiverIO):
    """Valid inputs for ``model`` (random values in [-100, 100], masks with fully masked rows) or,
    one time in three, inputs with one fault: empty batch, wrong size / channels / rank / dtype, a
    mask of the wrong shape or dtype, bad subsampled points or query mask."""
    fault = draw(st.sampled_from(INPUT_FAULTS)) if draw(st.integers(0, 2)) == 2 else None
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    batch = 0 if fault == "batch0" else draw(st.integers(1, 3))
    if cfg.preprocessor is not None:
        p = cfg.preprocessor
        h, w = p.image_size
        fixed = p.position_encoding == "trainable" or p.prep_type == "patches" or cfg.decoder.concat_preprocessed_input
        if fault == "size" or (not fixed and draw(st.booleans())):
            h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))  # other sizes: fine for Fourier
        c = draw(st.integers(1, 4)) if fault == "channels" else p.in_channels
        shape = [batch, c, h, w]
    else:
        o = math.prod(cfg.decoder.output_index_dims)
        m_tokens = draw(st.integers(0, 6)) if fault == "size" else draw(st.integers(1, 6))
        if cfg.decoder.type == "basic" and cfg.decoder.concat_preprocessed_input and fault != "size":
            m_tokens = o
        c = draw(st.integers(1, 7)) if fault == "channels" else cfg.input_channels
        shape = [batch, m_tokens, c]
    n_tokens = shape[1] if cfg.preprocessor is None else math.prod(model.preprocessor.grid(shape[2], shape[3]))
    if fault == "rank":
        shape = shape[1:] if draw(st.booleans()) else shape + [2]
    kind = draw(st.sampled_from(["uniform", "uniform", "constant", "extreme"]))
    if kind == "uniform":
        x = torch.rand(shape, generator=g) * 200 - 100
    elif kind == "constant":
        x = torch.full(shape, float(draw(st.floats(-100, 100, allow_nan=False))))
    else:
        x = torch.where(torch.rand(shape, generator=g) > 0.5, 100.0, -100.0)
    if fault == "dtype":
        x = x.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool])))

    mask = None
    mask_kind = draw(st.sampled_from(["none", "random", "all_false", "one_row_dead"]))
    if fault in ("mask_shape", "mask_dtype") or mask_kind != "none":
        mask = torch.rand(batch, n_tokens, generator=g) > 0.5
        if mask_kind == "all_false":
            mask[:] = False
        elif mask_kind == "one_row_dead" and batch:
            mask[0] = False
        if fault == "mask_shape":
            mask = draw(st.sampled_from([torch.ones(batch, n_tokens + 1, dtype=torch.bool),
                                         torch.ones(batch, 2, n_tokens, dtype=torch.bool),
                                         torch.ones(n_tokens, dtype=torch.bool)]))
        elif fault == "mask_dtype":
            mask = mask.to(draw(st.sampled_from([torch.float32, torch.int64, torch.uint8])))
    extra = {}
    if cfg.decoder.type == "basic" or fault in ("points", "qmask"):
        o = math.prod(cfg.decoder.output_index_dims)
        if fault == "points" or draw(st.integers(0, 2)) == 0:
            n_sub = draw(st.integers(1, 3))
            lo, hi = (-2, o + 2) if fault == "points" else (0, o)
            points = torch.randint(lo, hi, (n_sub,), generator=g)
            if fault == "points" and draw(st.booleans()):
                points = draw(st.sampled_from([points.float(), points[None].expand(batch + 1, -1),
                                               points[:0]]))
            elif draw(st.booleans()):
                points = torch.randint(lo, hi, (batch, n_sub), generator=g)  # per-example points
            extra["subsampled_output_points"] = points
        if fault == "qmask" or draw(st.booleans()):
            points = extra.get("subsampled_output_points")
            n_q = points.shape[-1] if points is not None and cfg.decoder.position_encoding != "trainable" else o
            if fault == "qmask":
                n_q += draw(st.sampled_from([1, -1 if n_q > 1 else 2]))
            qm = torch.rand(batch, n_q, generator=g) > 0.3
            if batch and draw(st.booleans()):
                qm[0] = False  # fully masked output rows
            extra["query_mask"] = qm
    return x, mask, extra, fault


def expected_shape(cfg: PerceiverIOConfig, model: PerceiverIO, batch: int, extra: dict) -> tuple[int, ...]:
    d = cfg.decoder
    if d.type in ("classification", "projection"):
        return (batch, d.num_outputs)
    o = math.prod(d.output_index_dims)
    points = extra.get("subsampled_output_points")
    if points is not None and d.position_encoding != "trainable":
        o = points.shape[-1]
    return (batch, o, d.num_outputs if d.final_project else model.decoder.query_channels)


def _build(prep, encoder, decoder, top):
    return PerceiverIOConfig(
        preprocessor=ImagePreprocessorConfig(**prep) if prep is not None else None,
        encoder=EncoderConfig(**encoder), decoder=DecoderConfig(**decoder), **top)


def _build_and_call(data, spec, train: bool, tally: Counter) -> None:
    """Build ``spec`` and call it on drawn inputs: either finite outputs of the documented shape (and, in
    train mode, finite gradients), or ValueError/TypeError with a message. Counts each outcome in ``tally``."""
    *parts, corrupted = spec
    torch.manual_seed(0)
    try:
        cfg = _build(*parts)
        model = PerceiverIO(cfg)
    except ACCEPTED as exc:
        assert str(exc).strip()
        # configurations are refused by the validation toolkit, whose errors the CLI reports in one line
        assert isinstance(exc, UserError), f"{type(exc).__name__} is not a perceivers.core.errors.UserError: {exc}"
        # a configuration without corrupted fields is only refused for a documented reason
        assert corrupted or any(reason in str(exc) for reason in LEGITIMATE_CONFIG_REFUSALS), exc
        tally["rejected config"] += 1
        event("rejected config")
        return
    assert model.num_parameters() > 0
    model.train(train)
    x, mask, extra, fault = data.draw(inputs(cfg, model))
    try:
        with torch.set_grad_enabled(model.training):
            out = model(x, mask, **extra)
    except ACCEPTED as exc:
        assert str(exc).strip()
        # a fault-free input is only refused for these documented reasons
        assert fault is not None or any(reason in str(exc) for reason in LEGITIMATE_REFUSALS), exc
        tally["rejected input" if fault is not None else "refused valid input"] += 1
        event("rejected input")
        return
    event(f"ran {cfg.decoder.type} prep={cfg.preprocessor.prep_type if cfg.preprocessor else None}")
    assert out.shape == expected_shape(cfg, model, x.shape[0], extra)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if model.training:
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
    tally["ran" if fault is None else "ran with a harmless fault"] += 1


def test_build_and_call_never_crash():
    """Random configurations (one in three corrupted) and inputs (one in three faulty) either run or are
    refused with ValueError/TypeError; most of them run (a validation that refused everything fails here)."""
    tally: Counter = Counter()

    @SETTINGS
    @given(data=st.data(), spec=configs(), train=st.integers(0, 3))
    def check(data, spec, train):
        _build_and_call(data, spec, train == 0, tally)

    check()
    total = sum(tally.values())
    assert total >= 100, tally
    assert tally["ran"] >= 0.3 * total, tally  # about half in practice
    assert tally["rejected config"] >= 0.1 * total and tally["rejected input"] >= 0.05 * total, tally


def test_valid_configs_build_and_run():
    """Uncorrupted configurations (validity by construction) always build; fault-free inputs run."""
    tally: Counter = Counter()

    @settings(SETTINGS, max_examples=60)
    @given(data=st.data(), spec=configs(corrupt=False), train=st.integers(0, 3))
    def check(data, spec, train):
        before = tally["rejected config"]
        _build_and_call(data, spec, train == 0, tally)
        assert tally["rejected config"] == before, "a valid configuration was refused"

    check()
    assert tally["rejected config"] == 0 and tally["ran"] >= 0.5 * sum(tally.values()), tally


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    heads=st.integers(-1, 4), qk=st.integers(-1, 8), v=st.integers(-1, 8), out_ch=st.integers(0, 5),
    n=st.integers(1, 4), m=st.integers(1, 5), seed=st.integers(0, 1000),
    mask_kind=st.sampled_from(["none", "kpad", "full", "all_false", "bad_shape", "bad_dtype"]),
    scale=st.floats(0, 100),
)
def test_attention_layer_never_crashes(heads, qk, v, out_ch, n, m, seed, mask_kind, scale):
    try:
        attn = Attention(q_in_channels=3, kv_in_channels=4, qk_channels=qk, v_channels=v, output_channels=out_ch,
                         num_heads=heads)
    except ACCEPTED as exc:
        assert str(exc).strip()
        return
    g = torch.Generator().manual_seed(seed)
    x_q = (torch.rand(2, n, 3, generator=g) * 2 - 1) * scale
    x_kv = (torch.rand(2, m, 4, generator=g) * 2 - 1) * scale
    mask = {
        "none": None,
        "kpad": torch.rand(2, m, generator=g) > 0.5,
        "full": torch.rand(2, n, m, generator=g) > 0.5,
        "all_false": torch.zeros(2, n, m, dtype=torch.bool),
        "bad_shape": torch.ones(2, n + 1, m + 1, dtype=torch.bool),
        "bad_dtype": torch.ones(2, m),
    }[mask_kind]
    try:
        out = attn(x_q, x_kv, mask)
    except ACCEPTED as exc:
        assert mask_kind in ("bad_shape", "bad_dtype") and str(exc).strip()
        return
    assert mask_kind not in ("bad_shape", "bad_dtype")
    assert out.shape == (2, n, out_ch) and torch.isfinite(out).all()
    if mask is not None:
        full = mask if mask.dim() == 3 else mask[:, None].expand(2, n, m)
        dead = ~full.any(-1)
        assert torch.equal(out[dead], attn.o_proj.bias.detach().expand(int(dead.sum()), out_ch))


@pytest.mark.parametrize("prep_type", ["pixels", "patches", "conv1x1", "conv"])
def test_every_prep_type_is_reachable(prep_type):
    """Guard for the generator above: each prep type yields a valid, callable model."""
    spatial = {"conv": 4, "patches": 2}.get(prep_type, 1)
    cfg = _build(dict(image_size=(8, 8), prep_type=prep_type, spatial_downsample=spatial, num_bands=2,
                      num_channels=4),
                 dict(num_latents=2, num_latent_channels=4, num_blocks=1, num_self_attends_per_block=1,
                      num_self_attend_heads=2),
                 dict(type="classification", num_outputs=3, num_query_channels=4), {})
    out = PerceiverIO(cfg).eval()(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
