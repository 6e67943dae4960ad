"""HiP masked autoencoding: mask token, masking, loss, Fourier table, PNG grid, pooled classifier, tasks."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from perceivers import create_model
from perceivers.data.images import images_to_tokens, tokens_to_images, write_png
from perceivers.layers.position import fourier_features, grid_positions
from perceivers.models import from_pretrained
from perceivers.models.hip.classifier import HiPClassifier, HiPClassifierConfig
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP
from perceivers.training.hip_mae import (
    HiPFinetuneTask,
    HiPMAETask,
    fourier_position_table,
    masked_mse,
    normalise_targets,
    random_mask,
    reconstruction_grid,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> HiPConfig:
    base = dict(modalities={"image": (16, 1)}, num_groups=(2, 1, 2), num_self_attend_layers=(1, 1, 1),
                num_latents=(2, 4, 2), num_channels=(8, 16, 8), num_self_attend_heads=(2, 2, 2),
                num_cross_attend_heads=(1, 1, 1), num_embedding_channels=8, num_position_encoding_channels=4,
                use_mask_token=True)
    base.update(overrides)
    return HiPConfig(**base)


def _randomise_unembedders(model: HiP) -> None:
    with torch.no_grad():
        for lin in model.unembedders.values():
            lin.weight.normal_()


def test_mask_token_hides_masked_values_only():
    model = HiP(tiny()).eval()
    _randomise_unembedders(model)
    x = torch.rand(3, 16, 1)
    mask = random_mask(3, 16, 0.5)
    out = model({"image": x}, {"image": mask})["input_reconstruction"]["image"]
    changed_hidden = torch.where(mask[..., None], torch.rand_like(x), x)
    same = model({"image": changed_hidden}, {"image": mask})["input_reconstruction"]["image"]
    assert torch.equal(out, same)  # masked values never reach the model
    changed_visible = torch.where(mask[..., None], x, x + 1.0)
    assert not torch.allclose(out, model({"image": changed_visible}, {"image": mask})["input_reconstruction"]["image"])
    no_mask = model({"image": x})["input_reconstruction"]["image"]
    assert torch.equal(no_mask, model({"image": x}, {"image": torch.zeros(3, 16, dtype=torch.bool)})
                       ["input_reconstruction"]["image"])
    assert not torch.allclose(no_mask, out)


def test_mask_token_is_off_by_default_and_counted():
    plain = tiny(use_mask_token=False)
    assert HiP(tiny()).num_parameters() == HiP(plain).num_parameters() + 8  # one C_emb token per modality
    assert create_model("hip-mini", device="meta").num_parameters() == 18_709_668
    with pytest.raises(ValueError, match="use_mask_token"):
        HiP(plain)({"image": torch.rand(1, 16, 1)}, {"image": torch.zeros(1, 16, dtype=torch.bool)})


def test_bad_masks_name_the_modality():
    model = HiP(tiny())
    x = {"image": torch.rand(2, 16, 1)}
    with pytest.raises(ValueError, match=r"mask of modality 'image'.*\(2, 16\)"):
        model(x, {"image": torch.zeros(2, 15, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        model(x, {"image": torch.zeros(2, 16)})
    with pytest.raises(ValueError, match="'audio'"):
        model(x, {"audio": torch.zeros(2, 16, dtype=torch.bool)})


def test_random_mask_exact_count_and_seeded():
    m = random_mask(5, 64, 0.75, generator=torch.Generator().manual_seed(1))
    assert m.dtype == torch.bool and m.shape == (5, 64)
    assert m.sum(1).tolist() == [48] * 5
    assert torch.equal(m, random_mask(5, 64, 0.75, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(m[0], m[1])
    assert random_mask(2, 4, 0.01).sum(1).tolist() == [1, 1]  # at least one, at most M - 1
    assert random_mask(2, 4, 0.99).sum(1).tolist() == [3, 3]
    with pytest.raises(ValueError, match="mask_ratio"):
        random_mask(1, 4, 1.0)


def test_masked_mse_counts_masked_positions_only():
    pred, target = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    mask = torch.tensor([[True, False, False, False], [False, False, True, True]])
    pred[~mask] = 100.0  # errors at visible positions are ignored
    assert masked_mse(pred, target, mask).item() == 0.0
    pred[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 4 + 9) / 9)
    with pytest.raises(ValueError):
        masked_mse(pred, target, mask[:, :3])


def test_normalise_targets_per_example():
    x = torch.rand(3, 10, 2) * torch.tensor([1.0, 5.0, 0.5])[:, None, None] + 2
    y = normalise_targets(x, "example")
    assert torch.allclose(y.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-4)
    assert normalise_targets(x, "none") is x
    with pytest.raises(ValueError, match="norm_targets"):
        normalise_targets(x, "patch")


def test_fourier_table_is_the_official_features_zero_padded():
    table = fourier_position_table(8, 32)  # 7 bands: 2 * (2*7 + 1) = 30 channels
    ref = fourier_features(grid_positions((8, 8)), num_bands=7, max_resolution=(8, 8))
    assert table.shape == (64, 32) and torch.equal(table[:, :30], ref) and not table[:, 30:].any()
    with pytest.raises(ValueError, match="channels"):
        fourier_position_table(8, 16, num_bands=4)


def test_tokens_round_trip_row_major():
    images = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    tokens = images_to_tokens(images)
    assert tokens.shape == (2, 20, 3) and tokens[1, 7].tolist() == images[1, :, 1, 2].tolist()
    assert torch.equal(tokens_to_images(tokens, 4, 5), images)


def _read_png(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(h, w, 3)


def test_reconstruction_grid_and_png(tmp_path):
    images = torch.rand(2, 1, 4, 4)
    recon = torch.rand(2, 1, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    grid = reconstruction_grid(images, mask, recon, scale=2)
    assert grid.shape == (2 * 10, 3 * 10, 3) and grid.dtype == np.uint8
    px = lambda row, panel, y, x: grid[row * 10 + 1 + 2 * y, panel * 10 + 1 + 2 * x]  # noqa: E731
    assert px(0, 0, 1, 2).tolist() == [51, 76, 255]  # masked pixel drawn blue
    assert px(0, 1, 1, 2).tolist() == [round(recon[0, 0, 1, 2].item() * 255)] * 3  # prediction shown
    assert px(0, 1, 0, 0).tolist() == px(0, 2, 0, 0).tolist() == [round(images[0, 0, 0, 0].item() * 255)] * 3
    write_png(tmp_path / "g.png", grid)
    assert np.array_equal(_read_png(tmp_path / "g.png"), grid)


def test_classifier_shares_hip_names_and_matches_its_processor():
    hip = HiP(tiny(use_mask_token=False)).eval()
    clf = HiPClassifier(HiPClassifierConfig(hip=hip.config, num_classes=3)).eval()
    hip_keys = set(hip.state_dict())
    assert {k for k in clf.state_dict() if not k.startswith("head")} <= hip_keys
    assert clf.load_hip_weights(hip) == ["position_tables.image"]
    assert torch.equal(clf.position_tables["image"], hip.position_tables["image"])
    copied = clf.load_hip_weights(hip, ("",))
    assert len(copied) == len(clf.state_dict()) - 4  # all but head_norm and head
    with torch.no_grad():
        clf.head.weight.normal_()
    seen = {}
    hip.blocks[hip.config.processor_index].register_forward_hook(lambda m, i, o: seen.update(z=o))
    x = {"image": torch.rand(2, 16, 1)}
    hip(x)
    expected = clf.head(clf.head_norm(seen["z"].mean(dim=(1, 2))))
    assert torch.allclose(clf(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="label_modalities"):
        HiPClassifierConfig(hip=tiny(modalities={"image": (16, 1), "y": (1, 2)}, label_modalities=("y",)),
                            num_classes=2)


def test_classifier_save_load(tmp_path):
    clf = create_model("hip-mae-digits-classifier")
    with torch.no_grad():
        clf.head.weight.normal_()
    clf.save_pretrained(tmp_path / "m")
    again = from_pretrained(tmp_path / "m")
    x = {"image": torch.rand(2, 64, 1)}
    assert isinstance(again, HiPClassifier) and torch.equal(clf.eval()(x), again.eval()(x))


def test_mae_task_loss_eval_and_grid(tmp_path):
    task = HiPMAETask(grid_examples=3)
    model = task.build_model()
    _randomise_unembedders(model)
    batch = [torch.stack([task.train_dataset(0)[i][0] for i in range(4)])]
    loss, metrics = task.training_loss(model, batch)
    loss.backward()
    assert loss.item() > 0 and metrics["masked_mse"] == pytest.approx(loss.item())
    assert model.mask_tokens["image"].grad.abs().sum() > 0
    result = task.evaluate(model)
    assert result["num_test_images"] == 360 and result["test_masked_mse"] > 0
    assert result == task.evaluate(model)  # fixed evaluation masks
    task.on_end(model, tmp_path)
    assert _read_png(tmp_path / "reconstructions.png").shape == (3 * 66, 3 * 66, 3)  # 8x8 digits shown 8x larger
    with pytest.raises(ValueError, match="mask_ratio"):
        HiPMAETask(mask_ratio=0.0)


def test_finetune_task_position_inits(tmp_path):
    hip = create_model("hip-mae-digits")
    hip.save_pretrained(tmp_path / "mae")
    mae = HiPFinetuneTask(pretrained=str(tmp_path / "mae")).build_model()
    assert torch.equal(mae.position_tables["image"], hip.position_tables["image"])
    assert not mae.position_tables["image"].requires_grad
    assert not torch.equal(mae.blocks[0].latents, hip.blocks[0].latents)  # positions only
    enc = HiPFinetuneTask(pretrained=str(tmp_path / "mae"), transfer="encoder", freeze_positions=False).build_model()
    assert torch.equal(enc.blocks[1].latents, hip.blocks[1].latents) and enc.position_tables["image"].requires_grad
    fourier = HiPFinetuneTask(positions="fourier", freeze_positions=False).build_model()
    assert torch.equal(fourier.position_tables["image"], fourier_position_table(8, 32))
    assert not fourier.position_tables["image"].requires_grad  # Fourier features stay fixed
    random = HiPFinetuneTask(positions="random", freeze_positions=False).build_model()
    assert random.position_tables["image"].requires_grad
    task = HiPFinetuneTask(positions="random")
    x, y = zip(*(task.train_dataset(0)[i] for i in range(4)))
    loss, metrics = task.training_loss(random, (torch.stack(x), torch.stack(y)))
    assert loss.item() == pytest.approx(np.log(10), rel=1e-5)  # zero-initialised logits
    assert 0.0 <= metrics["train_accuracy"] <= 1.0
    assert task.evaluate(random)["num_test"] == 360
    with pytest.raises(ValueError, match="pretrained"):
        HiPFinetuneTask(positions="mae")
    with pytest.raises(ValueError, match="transfer"):
        HiPFinetuneTask(positions="random", transfer="encoder")


def test_natural_crops_and_task():
    from perceivers.data.images import natural_crops

    crops = natural_crops(6, 16, seed=3)
    assert crops.shape == (6, 3, 16, 16) and crops.dtype == torch.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0 and crops.std() > 0
    assert torch.equal(crops, natural_crops(6, 16, seed=3))
    held_out = natural_crops(6, 16, held_out=True, seed=3)
    assert not any(torch.equal(a, b) for a in crops for b in held_out)
    task = HiPMAETask(data="natural", crop_size=8, num_crops=16, num_eval_crops=4, norm_targets="example")
    model = task.build_model()
    assert model.config.modalities == {"image": (64, 3)}
    loss, _ = task.training_loss(model, [torch.stack([task.train_dataset(0)[i][0] for i in range(4)])])
    assert loss.item() == pytest.approx(1.0, rel=0.5)  # unit-variance targets, zero-initialised outputs
    assert task.evaluate(model)["num_test_images"] == 4
    with pytest.raises(ValueError, match="size"):
        natural_crops(1, 2000)


def test_cli_train_hip_mae_then_finetune(tmp_path):
    from perceivers.cli.main import main

    mae = tmp_path / "mae"
    assert main(["train", "hip-mae", "--out", str(mae), "--steps", "2", "--batch-size", "8", "--no-progress"]) == 0
    assert (mae / "reconstructions.png").is_file() and (mae / "model" / "model.safetensors").is_file()
    out = tmp_path / "ft"
    assert main(["train", "hip-mae-finetune", "--out", str(out), "--pretrained", str(mae / "model"), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    clf = from_pretrained(out / "model")
    assert torch.equal(clf.position_tables["image"], from_pretrained(mae / "model").position_tables["image"])
    assert main(["train", "hip-mae", "--out", str(mae), "--mask-ratio", "1.5", "--no-progress"]) == 2
