"""Bad inputs and bad configurations raise ValueError / TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch
from testkit.models import tiny_config, tiny_decoder, tiny_encoder, tiny_prep

from perceivers import PerceiverIO
from perceivers.layers.attention import Attention
from perceivers.layers.blocks import MLP, CrossAttentionBlock, SelfAttentionBlock
from perceivers.models.perceiver_io.config import (
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIOConfig,
)


@pytest.fixture
def image_model():
    return PerceiverIO(tiny_config(prep=tiny_prep("pixels"))).eval()


@pytest.fixture
def token_model():
    return PerceiverIO(tiny_config(decoder=tiny_decoder("basic"))).eval()


# ------------------------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 3, 8, 8), (3,)])
def test_image_wrong_rank(image_model, shape):
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\)"):
        image_model(torch.randn(*shape))


def test_image_wrong_channels(image_model):
    with pytest.raises(ValueError, match="in_channels=3"):
        image_model(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="NCHW"):  # NHWC by mistake
        image_model(torch.randn(1, 8, 8, 3))


def test_image_empty(image_model):
    with pytest.raises(ValueError, match="non-empty"):
        image_model(torch.randn(0, 3, 8, 8))


def test_integer_images(image_model):
    with pytest.raises(TypeError, match="floating-point"):
        image_model(torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8))


def test_not_a_tensor(image_model, token_model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        image_model([[1.0]])
    with pytest.raises(TypeError, match="torch.Tensor"):
        token_model([[1.0]])


def test_input_dtype_must_match_model(image_model, token_model):
    with pytest.raises(TypeError, match="float64"):
        image_model(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        token_model(torch.randn(1, 4, 5, dtype=torch.float64))
    # a model converted to float64 takes float64 inputs
    assert token_model.double()(torch.randn(1, 4, 5, dtype=torch.float64)).dtype == torch.float64


def test_autocast_inputs_are_not_rejected(token_model):
    """Under autocast a bfloat16 input to a float32 model is legitimate."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_model(torch.randn(1, 4, 5, dtype=torch.bfloat16))
    assert torch.isfinite(out.float()).all()


def test_wrong_spatial_size_for_trainable_positions():
    m = PerceiverIO(tiny_config(prep=tiny_prep("conv1x1", position_encoding="trainable",
                                               trainable_pos_channels=4)))
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(1, 3, 8, 6))
    m(torch.randn(1, 3, 8, 8))  # the configured size works


def test_wrong_spatial_size_for_patches():
    m = PerceiverIO(tiny_config(prep=tiny_prep("patches")))
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(1, 3, 6, 8))


def test_tokens_wrong_rank_or_width(token_model):
    with pytest.raises(ValueError, match=r"\(B, M, 5\)"):
        token_model(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(B, M, 5\)"):
        token_model(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="non-empty"):
        token_model(torch.randn(1, 0, 5))
    with pytest.raises(TypeError, match="floating-point"):
        token_model(torch.ones(1, 4, 5, dtype=torch.long))


@pytest.mark.parametrize("shape", [(1, 5), (2, 4), (1, 4, 4), (4,), (1, 4, 1, 1)])
def test_input_mask_wrong_shape(token_model, shape):
    with pytest.raises(ValueError, match="input_mask"):
        token_model(torch.randn(1, 4, 5), torch.ones(*shape, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_input_mask_wrong_dtype(token_model, dtype):
    with pytest.raises(TypeError, match="input_mask.*bool"):
        token_model(torch.randn(1, 4, 5), torch.ones(1, 4, dtype=dtype))


def test_input_mask_not_a_tensor(token_model):
    with pytest.raises(TypeError, match="input_mask"):
        token_model(torch.randn(1, 4, 5), [[True] * 4])


def test_query_mask_errors(token_model):
    z = torch.randn(1, 4, 5)
    with pytest.raises(ValueError, match="query_mask"):
        token_model(z, query_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_mask"):
        token_model(z, query_mask=torch.ones(1, 6, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="query_mask"):
        token_model(z, query_mask=torch.ones(1, 6))


def test_subsampled_points_errors(token_model):
    x = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="subsampled_output_points"):
        token_model(x, subsampled_output_points=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="subsampled_output_points"):
        token_model(x, subsampled_output_points=torch.tensor([-1]))
    with pytest.raises(ValueError, match="subsampled_output_points"):
        token_model(x, subsampled_output_points=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="subsampled_output_points"):
        token_model(x, subsampled_output_points=torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="subsampled_output_points"):
        token_model(x, subsampled_output_points=torch.tensor([0.0, 1.0]))


def test_concat_preprocessed_input_needs_matching_token_count():
    m = PerceiverIO(tiny_config(decoder=tiny_decoder("basic", output_index_dims=(4,),
                                                     concat_preprocessed_input=True)))
    with pytest.raises(ValueError, match="concat_preprocessed_input"):
        m(torch.randn(1, 5, 5))


# --------------------------------------------------------------------------------------- layer level

def test_attention_layer_mask_errors():
    a = Attention(q_in_channels=4, kv_in_channels=4, qk_channels=4, v_channels=4, output_channels=4, num_heads=2)
    x = torch.randn(1, 3, 4)
    with pytest.raises(TypeError, match="mask"):
        a(x, x, torch.ones(1, 3))
    with pytest.raises(ValueError, match="mask"):
        a(x, x, torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_heads=0), "num_heads"),
    (dict(num_heads=-2), "num_heads"),
    (dict(qk_channels=0), "qk_channels"),
    (dict(v_channels=-4), "v_channels"),
    (dict(output_channels=0), "output_channels"),
    (dict(q_in_channels=-1), "q_in_channels"),
    (dict(qk_channels=6, num_heads=4), "qk_channels"),
])
def test_attention_layer_bad_sizes(kwargs, field):
    base = dict(q_in_channels=4, kv_in_channels=4, qk_channels=4, v_channels=4, output_channels=4, num_heads=1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Attention(**base)


def test_block_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        CrossAttentionBlock(q_channels=4, kv_channels=4, num_heads=0)
    with pytest.raises(ValueError, match="num_heads"):
        SelfAttentionBlock(channels=4, num_heads=-1)
    with pytest.raises(ValueError, match="widening_factor"):
        MLP(4, widening_factor=0)
    with pytest.raises(ValueError, match="channels"):
        MLP(-4)


# -------------------------------------------------------------------------------------------- configs

def test_qk_channels_not_divisible_by_heads():
    with pytest.raises(ValueError, match="num_self_attend_heads"):
        EncoderConfig(num_latent_channels=10, num_self_attend_heads=4)
    with pytest.raises(ValueError, match="qk_channels"):
        EncoderConfig(num_latent_channels=8, qk_channels=6, num_self_attend_heads=4)
    with pytest.raises(ValueError, match="num_cross_attend_heads"):
        tiny_config(encoder=tiny_encoder(num_cross_attend_heads=2))  # input width 5
    with pytest.raises(ValueError, match="decoder num_heads"):
        tiny_config(decoder=tiny_decoder(num_heads=3))  # latent width 8


def test_invalid_prep_type():
    with pytest.raises(ValueError, match="prep_type"):
        ImagePreprocessorConfig(prep_type="pixel")


@pytest.mark.parametrize("field,value", [
    ("num_latents", 0), ("num_latents", -1), ("num_latent_channels", -8), ("num_blocks", 0),
    ("num_self_attends_per_block", -1), ("num_self_attend_heads", 0), ("cross_attend_widening_factor", 0),
])
def test_negative_encoder_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("image_size", (0, 8)), ("image_size", (8, -8)), ("in_channels", 0), ("spatial_downsample", -4),
    ("num_channels", 0), ("num_bands", -1), ("project_pos_dim", -1), ("trainable_pos_channels", 0),
])
def test_negative_preprocessor_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        ImagePreprocessorConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("num_outputs", 0), ("output_index_dims", (3, -1)), ("num_query_channels", -2), ("num_heads", 0),
])
def test_negative_decoder_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        DecoderConfig(**{field: value})


@pytest.mark.parametrize("value", [2, 8, 12, 32])
def test_conv_downsample_must_be_power_of_4(value):
    with pytest.raises(ValueError, match="spatial_downsample.*power of 4"):
        ImagePreprocessorConfig(prep_type="conv", spatial_downsample=value)


@pytest.mark.parametrize("value", [4, 16, 64])
def test_conv_downsample_powers_of_4_accepted(value):
    assert ImagePreprocessorConfig(prep_type="conv", spatial_downsample=value).spatial_downsample == value


@pytest.mark.parametrize("value", [1.5, "4", None, True])
def test_non_int_sizes_are_type_errors(value):
    with pytest.raises(TypeError, match="num_latents"):
        EncoderConfig(num_latents=value)


def test_other_config_errors():
    with pytest.raises(ValueError, match="dropout_prob"):
        EncoderConfig(dropout_prob=1.0)
    with pytest.raises(ValueError, match="layout"):
        EncoderConfig(layout="stacked")
    with pytest.raises(ValueError, match="type"):
        DecoderConfig(type="flow")
    with pytest.raises(ValueError, match="position_encoding"):
        DecoderConfig(type="classification", position_encoding="fourier")
    with pytest.raises(ValueError, match="max_resolution"):
        DecoderConfig(type="basic", output_index_dims=(2, 3), max_resolution=(4,), position_encoding="fourier")
    with pytest.raises(ValueError, match="image_size"):
        ImagePreprocessorConfig(prep_type="patches", image_size=(10, 10), spatial_downsample=4)
    with pytest.raises(ValueError, match="concat_or_add_pos"):
        ImagePreprocessorConfig(prep_type="pixels", spatial_downsample=1, concat_or_add_pos="add")
    with pytest.raises(ValueError, match="input_channels"):
        PerceiverIOConfig(encoder=tiny_encoder(), decoder=tiny_decoder())
    with pytest.raises(ValueError, match="input_channels"):
        PerceiverIOConfig(preprocessor=tiny_prep(), input_channels=7, encoder=tiny_encoder(),
                          decoder=tiny_decoder())
    with pytest.raises(ValueError, match="activation"):
        tiny_config(activation="swish")
    with pytest.raises(TypeError, match="encoder"):
        PerceiverIOConfig(input_channels=4, encoder="big", decoder=tiny_decoder())
    with pytest.raises(TypeError, match="PerceiverIOConfig"):
        PerceiverIO({"input_channels": 4})


@pytest.mark.parametrize("cls,field", [(EncoderConfig, "latent_init_scale"), (DecoderConfig, "query_init_scale"),
                                       (ImagePreprocessorConfig, "pos_init_scale")])
@pytest.mark.parametrize("value", [0.0, -0.02, float("nan"), float("inf"), "0.02", True])
def test_init_scales_must_be_finite_positive(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


@pytest.mark.parametrize("cls,field", [
    (EncoderConfig, "use_query_residual"), (DecoderConfig, "final_project"), (DecoderConfig, "concat_pos"),
    (DecoderConfig, "concat_preprocessed_input"), (ImagePreprocessorConfig, "conv2d_use_batchnorm"),
    (ImagePreprocessorConfig, "sine_only"),
])
@pytest.mark.parametrize("value", ["False", 0, None])
def test_bool_fields_must_be_bools(cls, field, value):
    with pytest.raises(TypeError, match=field):
        cls(**{field: value})


@pytest.mark.parametrize("dec_type", ["classification", "projection"])
def test_final_project_false_only_for_basic_decoder(dec_type):
    with pytest.raises(ValueError, match="final_project"):
        DecoderConfig(type=dec_type, final_project=False)
    assert not DecoderConfig(type="basic", final_project=False).final_project
