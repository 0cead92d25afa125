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
    with pytest.raises(SystemExit, match="other differs from all in architecture: not the same recipe"):
        script("retune_checkpoint").retune_cross_fit(everything, [half_a, other], str(split))


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
