"""Ensembles of three-branch networks (issue 20): the mean of the members' maps, saved and loaded as one model."""

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import WeightsError
from napari_instance_tuner.core.families.three_branch.model import ThreeBranchConfig, ThreeBranchUNet
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.training.ensemble import assemble


def _member(tmp_path, tiny_arch, tiny_meta, seed, **meta):
    torch.manual_seed(seed)
    model = get_family("three-branch").build_model(tiny_arch)
    meta = tiny_meta(name=f"m{seed}", training={"val_images": ["a", "b"]}, **meta)
    return load_model(save_checkpoint(tmp_path / f"m{seed}.safetensors", model.state_dict(), meta))


def test_the_ensembles_maps_are_the_mean_of_its_members_maps(tmp_path, tiny_arch, tiny_meta):
    members = [_member(tmp_path, tiny_arch, tiny_meta, seed) for seed in (1, 2, 3)]
    ensemble = assemble(members, "ens")
    assert ensemble.meta["architecture"]["members"] == 3 and [m["name"] for m in ensemble.meta["ensemble"]] == \
        ["m1", "m2", "m3"]
    saved = save_checkpoint(tmp_path / "ens.safetensors", ensemble.model.state_dict(), ensemble.meta)
    loaded = load_model(saved)
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3)).astype(np.uint8)
    maps = lambda m: run(m.family.predict_maps(m.model, image, m.meta, device="cpu")).arrays
    got, each = maps(loaded), [maps(m) for m in members]
    for name in ("foreground", "boundary", "centroid"):
        expected = np.mean([e[name] for e in each], axis=0)
        assert np.abs(got[name] - expected).max() < 1e-4
        assert np.abs(each[0][name] - expected).max() > 1e-3  # the members do differ


def test_a_single_networks_metadata_does_not_change_and_members_round_trip():
    single = ThreeBranchConfig(base_channels=4, depth=2)
    assert "members" not in single.to_dict()
    pair = ThreeBranchConfig.from_dict({**single.to_dict(), "members": 2})
    assert pair.to_dict()["members"] == 2 and ThreeBranchConfig.from_dict(pair.to_dict()) == pair
    keys = ThreeBranchUNet(pair).state_dict()
    assert all(k.startswith(("members.0.", "members.1.")) for k in keys)
    with pytest.raises(ValueError, match="members must be 1..8"):
        ThreeBranchConfig.from_dict({**single.to_dict(), "members": 9})


def test_members_that_cannot_be_averaged_are_refused(tmp_path, tiny_arch, tiny_meta):
    a = _member(tmp_path, tiny_arch, tiny_meta, 1)
    with pytest.raises(WeightsError, match="2 to 8 members"):
        assemble([a], "x")
    other_scale = _member(tmp_path, tiny_arch, tiny_meta, 2, pixel_scale=0.5)
    with pytest.raises(WeightsError, match="pixel_scale 0.5 where m1 has 1.0"):
        assemble([a, other_scale], "x")
    torch.manual_seed(3)
    model = get_family("three-branch").build_model(tiny_arch)
    elsewhere = load_model(save_checkpoint(tmp_path / "m3.safetensors", model.state_dict(),
                                           tiny_meta(name="m3", training={"val_images": ["c"]})))
    with pytest.raises(WeightsError, match="validated on other images"):
        assemble([a, elsewhere], "x")
    pair = assemble([a, _member(tmp_path, tiny_arch, tiny_meta, 4)], "pair")
    nested = load_model(save_checkpoint(tmp_path / "pair.safetensors", pair.model.state_dict(), pair.meta))
    with pytest.raises(WeightsError, match="not a single three-branch network"):
        assemble([a, nested], "x")


def test_an_ensemble_runs_on_onnx_runtime_with_the_same_maps(tmp_path, tiny_arch, tiny_meta, monkeypatch):
    from napari_instance_tuner.core.inference import onnx_runtime
    from napari_instance_tuner.core.inference.runtime import load_for_runtime

    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(tmp_path / "cache"))
    pair = assemble([_member(tmp_path, tiny_arch, tiny_meta, seed) for seed in (1, 2)], "pair")
    saved = save_checkpoint(tmp_path / "pair.safetensors", pair.model.state_dict(), pair.meta)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3)).astype(np.uint8)
    maps = [run(m.family.predict_maps(m.model, image, m.meta, device="cpu")).arrays
            for m in (load_model(saved), load_for_runtime(saved, "onnx"))]
    for name in ("foreground", "boundary", "centroid"):
        assert np.abs(maps[0][name] - maps[1][name]).max() < 1e-4


@pytest.mark.parametrize("second", [None, {"base_channels": 6, "depth": 3, "conv_type": "standard"}],
                         ids=["one architecture", "mixed architectures"])
def test_fine_tuning_an_ensemble_freezes_every_members_encoder(tmp_path, tiny_arch, tiny_meta, disks_labels, second):
    from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune

    archs = [tiny_arch, {**tiny_arch, **(second or {})}]
    members = [_member(tmp_path, arch, tiny_meta, seed, architecture=arch) for seed, arch in zip((1, 2), archs)]
    pair = assemble(members, "pair")
    loaded = load_model(save_checkpoint(tmp_path / "pair.safetensors", pair.model.state_dict(), pair.meta))
    # 44: a multiple of 4, not of 8: with a depth-3 member the crops must follow its divisor, or its decoder fails
    labels = disks_labels((44, 44), ((13, 13), (13, 31), (31, 22)), 7)
    image = np.stack([(labels > 0) * 200 + 20] * 3, -1).astype(np.uint8)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    settings = FinetuneSettings(steps=4, lr=3e-3, batch_size=2, crop=44, freeze_encoder=True)
    model, _ = run(finetune(loaded, [CorrectedImage(image, labels, None)], settings))
    after = model.state_dict()
    weights = lambda part: [k for k in after if f".{part}." in k and after[k].is_floating_point()
                            and "running" not in k]
    assert weights("encoder") and all(torch.equal(after[k], before[k]) for k in weights("encoder"))
    for member in ("members.0.", "members.1."):
        assert any(not torch.equal(after[k], before[k]) for k in weights("decoders") if k.startswith(member))


def test_an_ensemble_exports_to_bioimageio_and_loads_back_with_the_same_labels(tmp_path, tiny_arch, tiny_meta):
    from napari_instance_tuner.core.io.bioimageio_export import PackageInfo, export_package
    from napari_instance_tuner.core.synthetic import synthetic_glands

    pair = assemble([_member(tmp_path, tiny_arch, tiny_meta, seed) for seed in (1, 2)], "pair")
    loaded = load_model(save_checkpoint(tmp_path / "pair.safetensors", pair.model.state_dict(), pair.meta))
    image = synthetic_glands((80, 112), seed=0)[0]
    package = export_package(loaded, image, tmp_path / "pair.zip", PackageInfo(pixel_size=0.5, authors=["A. Tester"]))
    again = load_model(package)
    assert again.meta["architecture"]["members"] == 2
    maps = [run(m.family.predict_maps(m.model, image, m.meta)).arrays["foreground"] for m in (loaded, again)]
    assert np.abs(maps[0] - maps[1]).max() < 1e-5


def test_the_images_an_ensemble_trained_on_are_every_members(tmp_path, tiny_arch, tiny_meta):
    from napari_instance_tuner.core.training.ensemble import trained_images

    a = _member(tmp_path, tiny_arch, tiny_meta, 1)
    b = _member(tmp_path, tiny_arch, tiny_meta, 2)
    a.meta["training"]["train_images"] = ["train_1", "train_2"]
    b.meta["training"]["train_images"] = ["train_1", "testA_5"]  # one member also trained on a testA image
    assert trained_images(a.meta) == {"train_1", "train_2"}
    assert trained_images(assemble([a, b], "ens").meta) == {"train_1", "train_2", "testA_5"}
    assert trained_images({"training": {}}) == set()


def test_cross_fitting_gives_each_image_to_the_one_model_that_never_trained_on_it():
    from napari_instance_tuner.core.errors import InstanceTunerError
    from napari_instance_tuner.core.training.ensemble import cross_fit_assignment

    half_a = {"training": {"train_images": ["t1", "t2", "a1", "a2"]}}  # saw part a, not part b
    half_b = {"training": {"train_images": ["t1", "t2", "b1"]}}
    assert cross_fit_assignment([half_a, half_b], ["b1", "a1", "a2"]) == [0, 1, 1]
    with pytest.raises(InstanceTunerError, match="t1 cannot be cross-fitted: every model trained on it"):
        cross_fit_assignment([half_a, half_b], ["a1", "t1"])
    with pytest.raises(InstanceTunerError, match="x9 cannot be cross-fitted: 2 models never trained on it"):
        cross_fit_assignment([half_a, half_b], ["x9"])
