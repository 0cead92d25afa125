"""Cross-fitted tuning (issue 20): a model trained on every image is tuned on the maps of models of its recipe,
each segmenting the images it never trained on (``scripts/retune_checkpoint.py --cross-fit``)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.evaluation.metrics import evaluate
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.params import params_from_dict
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.synthetic import synthetic_glands
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.jobs import summarise


def _split(root: Path) -> Path:
    """A GlaS-like split of 5 small images of 3 patients, with Grade.csv beside it."""
    import imageio.v3 as iio
    import tifffile

    split = root / "train"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    rows = ["name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for i, (patient, grade) in enumerate([("1", "benign"), ("1", "benign"), ("2", "malignant"), ("2", "malignant"),
                                          ("3", "malignant")]):
        image, labels = synthetic_glands((96, 128), seed=i)
        iio.imwrite(split / "images" / f"img{i}.png", image)
        tifffile.imwrite(split / "labels" / f"img{i}.tif", labels.astype(np.uint16))
        rows.append(f"img{i},{patient}, {grade}, x")
    (root / "Grade.csv").write_text("\n".join(rows) + "\n")
    return split


def _model(folder: Path, name: str, seed: int, trained: list[str], tiny_arch, tiny_meta, sure: float = 0.0):
    """A tiny three-branch model; ``sure`` > 0: foreground and centroid everywhere, no boundary (one object over
    the whole image); < 0: no foreground (no object); 0: random weights."""
    torch.manual_seed(seed)
    model = get_family("three-branch").build_model(tiny_arch)
    if sure:
        with torch.no_grad():
            for branch, sign in (("foreground", 1), ("boundary", -1), ("centroid", 1)):
                head = getattr(model.decoders, branch).head
                head.weight.zero_()
                head.bias.fill_(sign * sure)
    meta = tiny_meta(name=name, architecture=dict(tiny_arch), training={"train_images": trained, "val_images": []})
    return load_model(save_checkpoint(folder / f"{name}.safetensors", model.state_dict(), meta))


def test_the_model_trained_on_everything_is_tuned_on_each_images_unseen_maps(tmp_path, tiny_arch, tiny_meta,
                                                                            script):
    split = _split(tmp_path / "data")
    # img0 trained every model; img1, img2 only half_b (half_a never saw them); img3, img4 only half_a
    # maps that tell the two apart: half_a finds one object over each image, half_b none
    half_a = _model(tmp_path, "half_a", 1, ["img0", "img3", "img4"], tiny_arch, tiny_meta, sure=20.0)
    half_b = _model(tmp_path, "half_b", 2, ["img0", "img1", "img2"], tiny_arch, tiny_meta, sure=-20.0)
    everything = _model(tmp_path, "all", 3, [f"img{i}" for i in range(5)], tiny_arch, tiny_meta)
    before, after = script("retune_checkpoint").retune_cross_fit(everything, [half_a, half_b], str(split))
    meta = everything.meta
    assert meta["training"]["tuning_images"] == ["img1", "img2", "img3", "img4"]  # img0: nobody's unseen image
    assert [(c["name"], c["images"]) for c in meta["training"]["cross_fit"]] == \
        [("half_a", ["img1", "img2"]), ("half_b", ["img3", "img4"])]
    assert after >= before and "cross-fitted maps: 4 images" in meta["training"]["autotune"]["on"]
    assert meta["training"]["autotune"]["objective"] == "image-mean"  # the default: the score's mean over images
    # the recorded metrics are those of the unseen model's maps with the tuned parameters, per grade
    params = params_from_dict(everything.family.Params, meta["postprocess"])
    samples = {s.name: s for s in load_split(split)}
    groups = read_groups(split)

    def scored(owner: dict) -> dict:
        rows = []
        for name, model in owner.items():
            maps = run(model.family.predict_maps(model.model, samples[name].image, model.meta))
            rows.append({"name": name, **evaluate(model.family.postprocess(maps, params).labels, samples[name].labels)})
        return summarise(rows, groups)

    unseen = scored({"img1": half_a, "img2": half_a, "img3": half_b, "img4": half_b})
    seen = scored({"img1": half_b, "img2": half_b, "img3": half_a, "img4": half_a})  # what a mix-up would record
    got = meta["metrics"]["cross_fit"]
    assert got["benign"]["n_images"] == 1 and got["malignant"]["n_images"] == 3
    key = lambda summary: [summary[g][m] for g in ("benign", "malignant") for m in ("object_f1", "object_dice")]
    assert key(got) == key(unseen) != key(seen)


def test_cross_fit_models_of_another_recipe_are_refused(tmp_path, tiny_arch, tiny_meta, script):
    split = _split(tmp_path / "data")
    half_a = _model(tmp_path, "half_a", 1, ["img0", "img3", "img4"], tiny_arch, tiny_meta)
    other = _model(tmp_path, "other", 2, ["img0", "img1", "img2"], {**tiny_arch, "base_channels": 8}, tiny_meta)
    everything = _model(tmp_path, "all", 3, [f"img{i}" for i in range(5)], tiny_arch, tiny_meta)
    with pytest.raises(SystemExit, match="other's architecture is that of no member of all"):
        script("retune_checkpoint").retune_cross_fit(everything, [half_a, other], str(split))
    grey = _model(tmp_path, "grey", 4, ["img0", "img1", "img2"], {**tiny_arch, "in_channels": 1}, tiny_meta)
    with pytest.raises(SystemExit, match="grey differs from all in architecture.in_channels: not the same recipe"):
        script("retune_checkpoint").retune_cross_fit(everything, [half_a, grey], str(split))


def test_an_ensemble_of_two_recipes_is_tuned_on_both_recipes_cross_fitted_maps_averaged(tmp_path, tiny_arch,
                                                                                       tiny_meta, script):
    from napari_instance_tuner.core.family import Maps
    from napari_instance_tuner.core.training.ensemble import assemble

    split = _split(tmp_path / "data")
    other_arch = {**tiny_arch, "base_channels": 6, "depth": 3}
    halves = ([], [])
    for k, (arch, signs) in enumerate(((tiny_arch, (20.0, -20.0)), (other_arch, (-20.0, 3.0)))):
        for seed, trained, sure in ((1, ["img0", "img3", "img4"], signs[0]), (2, ["img0", "img1", "img2"], signs[1])):
            halves[k].append(_model(tmp_path, f"r{k}{seed}", 10 * k + seed, trained, arch, tiny_meta, sure=sure))
    everything = [_model(tmp_path, f"all{k}", 30 + k, [f"img{i}" for i in range(5)], arch, tiny_meta)
                  for k, arch in enumerate((tiny_arch, other_arch))]
    ensemble = assemble(everything, "ens")
    retune = script("retune_checkpoint").retune_cross_fit
    retune(ensemble, halves[0], str(split), also=halves[1])
    meta = ensemble.meta
    assert [(c["name"], c["images"]) for c in meta["training"]["cross_fit"]] == [
        ("r01", ["img1", "img2"]), ("r02", ["img3", "img4"]), ("r11", ["img1", "img2"]), ("r12", ["img3", "img4"])]
    on = meta["training"]["autotune"]["on"]
    assert "r01, r02 and r11, r12" in on and "averaged" in on
    # the recorded metrics are those of the two unseen halves' maps averaged, with the tuned parameters
    params = params_from_dict(ensemble.family.Params, meta["postprocess"])
    samples = {s.name: s for s in load_split(split)}
    owners = {"img1": 0, "img2": 0, "img3": 1, "img4": 1}

    def scored(recipes) -> dict:
        rows = []
        for name, o in owners.items():
            each = [run(r[o].family.predict_maps(r[o].model, samples[name].image, r[o].meta)).arrays for r in recipes]
            maps = Maps(arrays={k: np.mean([e[k] for e in each], axis=0) for k in each[0]})
            rows.append({"name": name, **evaluate(ensemble.family.postprocess(maps, params).labels,
                                                  samples[name].labels)})
        return summarise(rows, read_groups(split))

    key = lambda summary: [summary[g][m] for g in ("benign", "malignant") for m in ("object_f1", "object_dice")]
    assert key(meta["metrics"]["cross_fit"]) == key(scored(halves)) != key(scored(halves[:1]))
    stranger = _model(tmp_path, "stranger", 9, ["img0", "img1", "img2"], {**tiny_arch, "base_channels": 8}, tiny_meta)
    with pytest.raises(SystemExit, match="stranger's architecture is that of no member of ens"):
        retune(ensemble, halves[0], str(split), also=[halves[1][0], stranger])
    for recipes in ((halves[0], None), (halves[1], halves[0])):  # one recipe for two members; the wrong order
        with pytest.raises(SystemExit, match="give one recipe's halves per member, in the members' order"):
            retune(ensemble, recipes[0], str(split), also=recipes[1])


def test_the_search_can_start_from_the_family_defaults_and_leave_parameters_out(tmp_path, tiny_arch, tiny_meta,
                                                                                script):
    # what the k-fold benchmark validates: each fold's search starts from the family's defaults with some
    # parameters left out (--exclude); the shipped tuning must be able to repeat it on every image
    split = _split(tmp_path / "data")
    half_a = _model(tmp_path, "half_a", 1, ["img0", "img3", "img4"], tiny_arch, tiny_meta, sure=20.0)
    half_b = _model(tmp_path, "half_b", 2, ["img0", "img1", "img2"], tiny_arch, tiny_meta, sure=-20.0)
    retune = script("retune_checkpoint").retune_cross_fit
    family = get_family("three-branch")
    defaults = family.Params()
    odd = {"split_radius": 7, "fg_threshold": 0.9}  # not the defaults: where a search from the checkpoint starts
    assert all(getattr(defaults, k) != v for k, v in odd.items())

    def tuned(**how) -> dict:
        everything = _model(tmp_path, "all", 3, [f"img{i}" for i in range(5)], tiny_arch, tiny_meta)
        everything.meta["postprocess"] = dict(odd)
        retune(everything, [half_a, half_b], str(split), **how)
        return everything.meta

    from_checkpoint = tuned(exclude=["split_radius"])
    assert from_checkpoint["postprocess"]["split_radius"] == 7  # left out: stays where the search started
    assert "split_radius" not in from_checkpoint["training"]["autotune"]["searched"]
    assert "fg_threshold" in from_checkpoint["training"]["autotune"]["searched"]
    from_defaults = tuned(exclude=["split_radius"], from_defaults=True)
    assert from_defaults["postprocess"]["split_radius"] == defaults.split_radius
    assert "searched" not in tuned()["training"]["autotune"]  # no exclusion: every parameter, as before
    with pytest.raises(SystemExit, match="--exclude: no parameter nonsense in"):
        tuned(exclude=["nonsense"])
