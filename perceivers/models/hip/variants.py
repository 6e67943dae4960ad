"""Registered Hierarchical Perceiver variants (official ``perceiver.py`` ``VARIANTS``; docs/models.md#hip-variants).

Parameter counts depend on the modalities (embedders, position tables and their projections are
per modality). Every variant is built on the official test's mock modalities (``perceiver_test.py``):
ImageNet ``imagenet_image (1024, 3)`` + ``imagenet_label (32, 1)`` and AudioSet ``audioset_audio
(128, 16)`` + ``audioset_label (16, 16)``, all four in one model whose forward calls carry one dataset
at a time (so ``num_position_slots`` = 2, or 1 in the class bottleneck where labels are separate),
with ``num_position_encoding_channels=512``. Override ``modalities`` for real data.
"""

from __future__ import annotations

from perceivers.core.registry import register_model
from perceivers.models.hip.classifier import HiPClassifier, HiPClassifierConfig
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP

OFFICIAL_TEST_MODALITIES = {
    "imagenet_image": (1024, 3), "imagenet_label": (32, 1),
    "audioset_audio": (128, 16), "audioset_label": (16, 16),
}
OFFICIAL_TEST_LABELS = ("imagenet_label", "audioset_label")


def _hip(**blocks) -> HiPConfig:
    return HiPConfig(modalities=OFFICIAL_TEST_MODALITIES, num_position_encoding_channels=512, num_position_slots=2,
                     **blocks)


_MINI = dict(num_groups=(16, 1, 16), num_self_attend_layers=(2, 1, 1), num_latents=(128, 64, 128),
             num_channels=(128, 1024, 128), num_self_attend_heads=(4, 32, 4), num_cross_attend_heads=(1, 1, 1),
             num_embedding_channels=32)


@register_model("hip-mini", model_cls=HiP, num_parameters=18_709_668)
def hip_mini() -> HiPConfig:
    """HiP Mini: groups (16, 1, 16), channels (128, 1024, 128); 18,709,668 params (official test count)."""
    return _hip(**_MINI)


@register_model("hip-16", model_cls=HiP, num_parameters=99_224_996)
def hip_16() -> HiPConfig:
    """HiP-16: 7 blocks, groups (16, 4, 1, 1, 1, 4, 16), 18 layers in block 2; 99,224,996 params (official)."""
    return _hip(num_groups=(16, 4, 1, 1, 1, 4, 16), num_self_attend_layers=(2, 2, 18, 2, 1, 1, 1),
                num_latents=(128, 256, 256, 64, 256, 256, 128), num_channels=(128, 256, 512, 1024, 512, 256, 128),
                num_self_attend_heads=(4, 8, 16, 32, 16, 8, 4), num_cross_attend_heads=(1,) * 7,
                num_embedding_channels=32)


@register_model("hip-256", model_cls=HiP, num_parameters=95_585_188)
def hip_256() -> HiPConfig:
    """HiP-256: 11 blocks, groups 256 -> 1 -> 256, 18 layers in block 4; 95,585,188 params (official)."""
    return _hip(num_groups=(256, 64, 16, 4, 1, 1, 1, 4, 16, 64, 256),
                num_self_attend_layers=(1, 1, 2, 2, 18, 2, 1, 1, 1, 1, 1),
                num_latents=(32, 64, 128, 256, 256, 64, 256, 256, 128, 64, 32),
                num_channels=(64, 96, 128, 256, 512, 1024, 256, 128, 64, 32, 16),
                num_self_attend_heads=(1, 2, 4, 8, 16, 32, 16, 8, 4, 2, 1), num_cross_attend_heads=(1,) * 11,
                num_embedding_channels=16)


@register_model("hip-16x3", model_cls=HiP, num_parameters=233_240_356)
def hip_16x3() -> HiPConfig:
    """HiP 16x3: groups (16, 1, 16), 18-layer 1024-wide processor; 233,240,356 params (no official figure)."""
    return _hip(num_groups=(16, 1, 16), num_self_attend_layers=(2, 18, 2), num_latents=(128, 256, 128),
                num_channels=(128, 1024, 128), num_self_attend_heads=(4, 32, 4), num_cross_attend_heads=(1, 1, 1),
                num_embedding_channels=32)


@register_model("hip-mini-class-bottleneck", model_cls=HiP, num_parameters=21_114_788)
def hip_mini_class_bottleneck() -> HiPConfig:
    """HiPClassBottleneck Mini: labels join the processor; 21,114,788 params (official test count)."""
    return HiPConfig(modalities=OFFICIAL_TEST_MODALITIES, label_modalities=OFFICIAL_TEST_LABELS,
                     num_position_encoding_channels=512, num_position_slots=1, **_MINI)


@register_model("hip-debug", model_cls=HiP, num_parameters=8_893)
def hip_debug() -> HiPConfig:
    """Tiny HiP for tests: two modalities, groups (4, 1, 4), 8-16 channels; 8,893 params."""
    return HiPConfig(modalities={"image": (30, 3), "label": (5, 2)}, num_groups=(4, 1, 4),
                     num_self_attend_layers=(1, 1, 1), num_latents=(4, 4, 4), num_channels=(8, 16, 8),
                     num_self_attend_heads=(2, 2, 2), num_cross_attend_heads=(1, 1, 1), num_embedding_channels=8,
                     num_position_encoding_channels=4)


def _io(**block) -> HiPConfig:
    """A single-block model: the HiP repository's Perceiver IO baseline (``ConcatenateGrouper``)."""
    return _hip(num_groups=(1,), num_cross_attend_heads=block.pop("num_cross_attend_heads", (1,)), **block)


@register_model("hip-perceiver-io-mini", model_cls=HiP, num_parameters=677_156)
def hip_perceiver_io_mini() -> HiPConfig:
    """Perceiver IO Mini of the HiP repository: 128 latents x 128, 2 layers; 677,156 params (no official figure)."""
    return _io(num_self_attend_layers=(2,), num_latents=(128,), num_channels=(128,), num_self_attend_heads=(2,),
               self_attend_widening_factor=2, cross_attend_widening_factor=1, num_embedding_channels=128)


@register_model("hip-perceiver-io-c-50m", model_cls=HiP, num_parameters=31_129_124)
def hip_perceiver_io_c_50m() -> HiPConfig:
    """Perceiver IO c_50m of the HiP repo: 1024 latents x 512, 8 layers; 31,129,124 params (no official figure)."""
    return _io(num_self_attend_layers=(8,), num_latents=(1024,), num_channels=(512,), num_self_attend_heads=(8,),
               num_cross_attend_heads=(8,), self_attend_widening_factor=4, cross_attend_widening_factor=4,
               num_embedding_channels=512)


@register_model("hip-perceiver-io-c-150m", model_cls=HiP, num_parameters=133_886_628)
def hip_perceiver_io_c_150m() -> HiPConfig:
    """Perceiver IO c_150m of the HiP repository: 1024 latents x 896, 12 layers; 133,886,628 params (no official figure)."""
    return _io(num_self_attend_layers=(12,), num_latents=(1024,), num_channels=(896,), num_self_attend_heads=(16,),
               num_cross_attend_heads=(16,), self_attend_widening_factor=4, cross_attend_widening_factor=4,
               num_embedding_channels=896)


# ------------------------------------------------------------------------------ masked autoencoding (ours)

DIGITS_MODALITIES = {"image": (64, 1)}  # scikit-learn's 8x8 digits, one grey level per position


def _mae_digits() -> HiPConfig:
    return HiPConfig(modalities=DIGITS_MODALITIES, num_groups=(4, 1, 4), num_self_attend_layers=(2, 2, 1),
                     num_latents=(8, 16, 8), num_channels=(64, 128, 64), num_self_attend_heads=(4, 8, 4),
                     num_cross_attend_heads=(1, 1, 1), num_embedding_channels=32,
                     num_position_encoding_channels=512, use_mask_token=True)


@register_model("hip-mae-digits", model_cls=HiP, num_parameters=702_657)
def hip_mae_digits() -> HiPConfig:
    """Small HiP of `perceivers train hip-mae`: 8x8 digits in 4 groups of 2 rows, mask token; 702,657 params."""
    return _mae_digits()


@register_model("hip-mae-digits-classifier", model_cls=HiPClassifier, num_parameters=578_794)
def hip_mae_digits_classifier() -> HiPClassifierConfig:
    """Pooled classifier on the encoder half of `hip-mae-digits` (10 classes); 578,794 params."""
    return HiPClassifierConfig(hip=_mae_digits().replace(use_mask_token=False), num_classes=10)
