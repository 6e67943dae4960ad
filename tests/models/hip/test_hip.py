"""Hierarchical Perceiver: official counts, grouper, regroup, group isolation, skips, class bottleneck."""

from __future__ import annotations

import json

import pytest
import torch

from perceivers import create_model
from perceivers.models import from_pretrained, get_entry
from perceivers.models.hip.blocks import (
    HiPBlock,
    assign_groups,
    group,
    plan_groups,
    regroup,
    ungroup,
)
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP

OFFICIAL = {"hip-16": 99_224_996, "hip-256": 95_585_188, "hip-mini": 18_709_668,
            "hip-mini-class-bottleneck": 21_114_788}


def tiny(**overrides) -> HiPConfig:
    """5 blocks (2 encoder, processor, 2 decoder) with different widths so skips need projections."""
    base = dict(modalities={"image": (30, 3), "label": (5, 2)}, num_groups=(4, 2, 1, 2, 4),
                num_self_attend_layers=(1, 1, 1, 1, 1), num_latents=(3, 4, 4, 4, 3), num_channels=(8, 12, 16, 8, 4),
                num_self_attend_heads=(2, 2, 2, 2, 2), num_cross_attend_heads=(1, 1, 1, 1, 1),
                num_embedding_channels=8, num_position_encoding_channels=4, self_attend_widening_factor=2)
    base.update(overrides)
    return HiPConfig(**base)


def inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.randn(batch, 30, 3), "label": torch.randn(batch, 5, 2)}


@pytest.mark.parametrize("name", ["hip-16", "hip-256", "hip-mini", "hip-mini-class-bottleneck", "hip-16x3",
                                  "hip-mae-digits", "hip-mae-digits-classifier",
                                  "hip-debug", "hip-perceiver-io-mini", "hip-perceiver-io-c-50m",
                                  "hip-perceiver-io-c-150m"])
def test_variant_counts_on_meta(name):
    m = create_model(name, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert m.num_parameters() == get_entry(name).num_parameters
    if name in OFFICIAL:
        assert m.num_parameters() == OFFICIAL[name]


def test_official_position_projection_per_slot():
    m = create_model("hip-16", device="meta")
    assert len(m.position_projections) == 2 and m.position_projections[0].bias is None
    assert m.position_tables["imagenet_image"].shape == (1024, 32)
    assert create_model("hip-16", device="meta", num_position_encoding_channels=32).num_parameters() \
        == OFFICIAL["hip-16"] - 2 * 32 * 32


def test_conventions_grouper_example():
    plan = plan_groups({"image": 70, "label": 6}, 4)
    image, label = plan.modalities
    assert plan.tokens_per_group == 24 and plan.num_groups == 4
    assert (image.num_groups, image.final_padding, image.group_padding) == (3, 2, 0)
    assert (label.start, label.num_groups, label.final_padding, label.group_padding) == (3, 1, 0, 18)
    latents = ungroup(plan, torch.randn(2, 4, 24, 5))  # N_last = 24 latents per group
    assert latents["image"].shape == (2, 70, 5) and latents["label"].shape == (2, 6, 5)


def test_grouper_assignment_ties_and_padding():
    assert assign_groups({"a": 4, "b": 4}, 3) == {"a": 2, "b": 1}  # tie -> first modality
    assert assign_groups({"b": 4, "a": 4}, 3) == {"b": 2, "a": 1}
    assert assign_groups({"a": 10, "b": 3}, 4) == {"a": 3, "b": 1}  # 10/2=5 > 3, then 10/3 > 3
    plan = plan_groups({"a": 10, "b": 3}, 4)
    assert plan.tokens_per_group == 4
    a, b = plan.modalities
    assert (a.final_padding, a.group_padding, b.final_padding, b.group_padding) == (2, 0, 0, 1)
    x = {"a": torch.arange(1, 11.0).view(1, 10, 1), "b": torch.arange(11, 14.0).view(1, 3, 1)}
    g = group(plan, x)
    assert g[0, :, :, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0]]
    back = ungroup(plan, g)
    assert torch.equal(back["a"], x["a"]) and torch.equal(back["b"], x["b"])


def test_grouper_errors():
    with pytest.raises(ValueError, match="3 modalities .*2 groups"):
        plan_groups({"a": 4, "b": 4, "c": 1}, 2)


def test_regroup_reshape_vs_transpose():
    x = torch.arange(8.0).view(1, 4, 2, 1)  # groups [0,1] [2,3] [4,5] [6,7]
    assert regroup(x, 2)[0, :, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert regroup(x, 2, "transpose_reshape")[0, :, :, 0].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with pytest.raises(ValueError, match="4 groups x 2 latents into 3 groups"):
        regroup(x, 3)


def test_attention_stays_within_groups():
    block = HiPBlock(in_channels=6, channels=8, num_groups=2, num_latents=3, num_self_attend_layers=2,
                     num_self_attend_heads=2, regroup_inputs=False).eval()
    torch.manual_seed(0)
    block.init_weights()
    x = torch.randn(1, 2, 5, 6)
    y = x.clone()
    # One channel of a group-0 token. (Adding the same amount to every channel of a token, as this test once
    # did, is removed by the input LayerNorm: the output moved by ~1e-6 only, inside rounding on some CPUs.)
    y[0, 0, 2, 0] += 3.0
    out_x, out_y = block(x), block(y)
    assert torch.equal(out_x[:, 1], out_y[:, 1])  # group 1 never sees it
    assert (out_x[:, 0] - out_y[:, 0]).abs().max() > 1e-2  # group 0 does, far above any rounding


def test_skips_come_from_the_mirrored_block():
    model = HiP(tiny()).eval()
    outputs, skips = {}, {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, args, out, i=i: outputs.__setitem__(i, out))
        block.register_forward_pre_hook(lambda mod, args, i=i: skips.__setitem__(i, args[1]))
    model(inputs())
    assert skips[0] is None and skips[1] is None and skips[2] is None
    assert skips[3] is outputs[1] and skips[4] is outputs[0]
    # widths: block 3 (8) <- block 1 (12) projected, block 4 (4) <- block 0 (8) projected
    assert model.blocks[3].skip_proj.weight.shape == (8, 12) and model.blocks[4].skip_proj.bias is not None
    assert model.blocks[1].skip_proj is None


def test_skip_without_projection_when_widths_match():
    model = HiP(tiny(num_channels=(8, 12, 16, 12, 8)))
    assert model.blocks[3].skip_proj is None and model.blocks[4].skip_proj is None


def test_zero_unembedders_give_zero_reconstructions():
    model = HiP(tiny()).eval()
    out = model(inputs())
    rec = out["input_reconstruction"]
    assert rec["image"].shape == (2, 30, 3) and rec["label"].shape == (2, 5, 2)
    assert all(torch.count_nonzero(r) == 0 for r in rec.values())
    assert out["latents"]["image"].abs().sum() > 0
    # image: 3 groups of 10, label: 1 group padded 5 -> 10; N_last = 3 latents
    assert out["latents"]["image"].shape == (2, 9, 4) and out["latents"]["label"].shape == (2, 0, 4)


def _perturb_unembedders(model: HiP) -> None:
    with torch.no_grad():
        for name in ("unembedders", "label_unembedders"):
            for lin in getattr(model, name, {}).values():
                lin.weight.normal_()
                lin.bias.normal_()


@pytest.mark.parametrize("labels", [(), ("label",)])
def test_gradients_reach_every_parameter(labels):
    config = tiny(label_modalities=labels, processor_num_latents_train=2)
    model = HiP(config).train()
    _perturb_unembedders(model)
    out = model(inputs())
    loss = sum(r.square().sum() for r in out["input_reconstruction"].values())
    loss = loss + sum(z.square().sum() for z in out["latents"].values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not missing


def test_class_bottleneck_labels_join_at_the_processor():
    model = HiP(tiny(label_modalities=("label",))).eval()
    _perturb_unembedders(model)
    seen = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0]))
        block.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(f"out{i}", out))
    x = inputs()
    out = model(x)
    # image alone: 4 groups of 8 (30 + 2 final padding); block 1 output 2 groups x 4 latents x 12
    assert seen[0].shape == (2, 4, 8, 8)
    assert seen[2].shape == (2, 1, 2 * 4 + 5, 12)  # regrouped latents + 5 label tokens
    assert model.label_embedders["label"].out_features == 12 and "label" not in model.embedders
    enc = seen["out1"].clone()
    x2 = dict(x, label=x["label"] + 1.0)
    out2 = model(x2)
    assert torch.equal(seen["out1"], enc)  # encoder never sees the label
    assert not torch.allclose(out2["input_reconstruction"]["image"], out["input_reconstruction"]["image"])
    assert list(out["input_reconstruction"]) == ["image", "label"]
    assert out["input_reconstruction"]["label"].shape == (2, 5, 2)


def test_modality_order_insertion_vs_sorted():
    x = {"zeta": torch.randn(1, 10, 3), "alpha": torch.randn(1, 10, 3)}
    mods = {"alpha": (10, 3), "zeta": (10, 3)}
    cfg = dict(modalities=mods, num_groups=(3, 1, 3), num_self_attend_layers=(1, 1, 1), num_latents=(2, 3, 2),
               num_channels=(4, 4, 4), num_self_attend_heads=(1, 1, 1), num_cross_attend_heads=(1, 1, 1),
               num_embedding_channels=4)
    model = HiP(HiPConfig(**cfg))
    assert [m.name for m in model.group_plan({k: 10 for k in x}).modalities] == ["zeta", "alpha"]
    assert assign_groups({k: 10 for k in x}, 3) == {"zeta": 2, "alpha": 1}
    sorted_model = HiP(HiPConfig(**cfg, sort_modalities=True))
    assert sorted_model._check_inputs(x)[0] == ["alpha", "zeta"]


def test_save_load_round_trip(tmp_path):
    model = HiP(tiny(label_modalities=("label",), regroup_type="transpose_reshape")).eval()
    _perturb_unembedders(model)
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "hip"
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = inputs()
    a, b = model(x), loaded(x)
    for key in ("input_reconstruction", "latents"):
        for m in a[key]:
            assert torch.equal(a[key][m], b[key][m]), (key, m)  # exact: loaded weights get aligned storage


def test_config_round_trip_and_validation():
    c = tiny(label_modalities=("label",))
    assert HiPConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="label_modalities"):
        tiny(label_modalities=("nope",))
    with pytest.raises(ValueError, match="1 group at the processor"):
        tiny(num_groups=(4, 2, 2, 2, 4))
    with pytest.raises(ValueError, match="mirroring block 0"):
        tiny(num_latents=(3, 4, 4, 4, 5))
    with pytest.raises(ValueError, match="odd number"):
        tiny(num_groups=(4, 1, 1, 4), num_self_attend_layers=(1,) * 4, num_latents=(3,) * 4,
             num_channels=(8,) * 4, num_self_attend_heads=(2,) * 4, num_cross_attend_heads=(1,) * 4)
    with pytest.raises(ValueError, match="regrouping 4x3 latents into 5 groups"):
        tiny(num_groups=(4, 5, 1, 5, 4))
    with pytest.raises(ValueError, match="num_channels"):
        tiny(num_channels=(8, 12, 16, 8, 4, 4))
    with pytest.raises(TypeError, match="modality 'image'"):
        tiny(modalities={"image": (30,), "label": (5, 2)})
    with pytest.raises(ValueError, match="num_position_slots"):
        tiny(num_position_slots=5)


def test_bad_inputs_name_the_modality():
    model = HiP(tiny()).eval()
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        model({"audio": torch.randn(1, 30, 3)})
    with pytest.raises(ValueError, match=r"'image' must have shape \(B, 30, 3\), got \(1, 29, 3\)"):
        model({"image": torch.randn(1, 29, 3)})
    with pytest.raises(ValueError, match="'label' has batch size 2"):
        model({"image": torch.randn(1, 30, 3), "label": torch.randn(2, 5, 2)})
    bottleneck = HiP(tiny(label_modalities=("label",)))
    with pytest.raises(ValueError, match="non-label modality"):
        bottleneck({"label": torch.randn(1, 5, 2)})
    one_slot = HiP(tiny(num_position_slots=1))
    with pytest.raises(ValueError, match="num_position_slots=1"):
        one_slot(inputs())


def test_perceiver_io_baseline_concatenates_modalities():
    config = tiny(num_groups=(1,), num_self_attend_layers=(1,), num_latents=(6,), num_channels=(8,),
                  num_self_attend_heads=(2,), num_cross_attend_heads=(2,))
    model = HiP(config).eval()
    _perturb_unembedders(model)
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    out = model(inputs())
    assert seen["x"].shape == (2, 1, 35, 8) and not model.blocks[0].regroup_inputs
    assert out["input_reconstruction"]["image"].shape == (2, 30, 3)
    assert out["input_reconstruction"]["label"].shape == (2, 5, 2)
    assert out["latents"]["image"].shape == (2, 6, 8) and out["latents"]["label"].shape == (2, 0, 8)


def test_drop_path_keep_is_per_example_and_unscaled():
    from perceivers.models.hip.blocks import drop_path_keep

    keep = drop_path_keep(4000, 3, 0.3, torch.empty(0))
    assert keep.shape == (12000, 1, 1) and set(keep.unique().tolist()) <= {0.0, 1.0}
    per_example = keep.view(4000, 3)
    assert torch.equal(per_example, per_example[:, :1].expand(-1, 3))  # every group of an example alike
    assert abs(per_example[:, 0].mean().item() - 0.7) < 0.03


def test_drop_path_matches_a_reference_and_is_off_in_eval():
    from perceivers.models.hip.blocks import drop_path_keep

    cfg = tiny(drop_path_rate=0.5)
    model = HiP(cfg)
    _perturb_unembedders(model)
    plain = HiP(tiny())
    plain.load_state_dict(model.state_dict())
    x = inputs(3)
    model.eval(), plain.eval()
    assert torch.equal(model(x)["input_reconstruction"]["image"], plain(x)["input_reconstruction"]["image"])
    block = model.blocks[2].train()  # processor: 1 group, 12-channel inputs
    z = torch.randn(3, 1, 6, 12)
    torch.manual_seed(5)
    out = block(z)
    torch.manual_seed(5)
    q = block.cross_attend(block.queries(3)[:, 0], z[:, 0])  # (3, N, D)
    for layer in block.self_attends:  # reference: independent keep draws for both residual branches
        q = q + drop_path_keep(3, 1, 0.5, q) * layer.attention(layer.attention_norm(q), layer.attention_norm(q))
        q = q + drop_path_keep(3, 1, 0.5, q) * layer.mlp(layer.mlp_norm(q))
    assert torch.allclose(out[:, 0], q, atol=1e-6)
    outs = [block(z) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="drop_path_rate"):
        tiny(drop_path_rate=1.0)
