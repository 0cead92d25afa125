"""Fine-tuning with a held-out region: never trained on, scored every ``validate_every`` steps, best weights kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.io.checkpoint import read_checkpoint
from napari_instance_tuner.core.params import params_from_dict
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.finetune import (
    CorrectedImage,
    FinetuneSettings,
    _held_out,
    finetune,
    make_validator,
    mostly_inside,
    save_finetuned,
    split_holdout,
)

#: Post-processing that lets a barely trained tiny model show objects (as in test_finetune_metric).
LENIENT = {"subtract_boundaries": False, "require_centroid": False, "min_size": 20, "grow_back": 0,
           "close_radius": 0, "open_radius": 0, "fg_threshold": 0.5}


@pytest.fixture
def make_pair(disks_labels):
    """``make_pair(holdout=True, region=None) -> CorrectedImage``: five disks on 48 x 72, two held out."""

    def make(holdout: bool = True, region=None) -> CorrectedImage:
        """Five disks on a 48 x 72 image; the right-most 24 columns (two whole disks) held out."""
        labels = disks_labels((48, 72), ((13, 13), (13, 35), (35, 24), (13, 60), (35, 58)), 8)
        rng = np.random.default_rng(0)
        image = (np.stack([(labels > 0) * 150 + 40] * 3, -1) + rng.integers(0, 30, (48, 72, 3))).astype(np.uint8)
        held = np.zeros((48, 72), bool)
        held[:, 48:] = True
        return CorrectedImage(image, labels, region, held if holdout else None)

    return make


def test_held_out_region_is_validated_never_trained_on_and_the_best_weights_are_kept(tmp_path, monkeypatch, tiny_loaded,
                                                                                      make_pair):
    loaded = tiny_loaded("three-branch", tmp_path)
    family = loaded.family
    seen = {}

    def spy(model, meta, pairs, settings):
        seen["pairs"] = pairs
        seen["batches"], loss, params = type(family).finetune_setup(family, model, meta, pairs, settings)
        return seen["batches"], loss, params

    monkeypatch.setattr(family, "finetune_setup", spy)
    pair = make_pair()
    params = params_from_dict(family.Params, LENIENT)
    settings = FinetuneSettings(steps=50, lr=1e-2, batch_size=2, crop=32, augment=False, freeze_encoder=False,
                                validate_every=10)
    progress = []
    model, result = run(finetune(loaded, [pair], settings, params=params), progress.append)

    # The batch maker was given the checked region minus the held-out columns, and nothing else.
    (trained,) = seen["pairs"]
    assert trained.holdout is None and np.array_equal(trained.region, ~pair.holdout)
    (region,) = seen["batches"].regions
    assert not region[:, 48:].any() and region[:, :48].all()
    # The starting model is scored first, then every 10th step; the score improves.
    assert progress[0].info == {"epoch": 0, "val_score": result.validation["start_score"]}
    scores = {h["epoch"]: h["val_score"] for h in result.history if "val_score" in h}
    assert list(scores) == [10, 20, 30, 40, 50] and len(result.history) == 50
    start, best = result.validation["start_score"], max(scores.values())
    assert start < 0.2 and best > start + 0.5, (start, scores)
    # The returned weights are those of the best validation.
    best_step = max(scores, key=scores.get)
    assert result.validation["best_step"] == result.best_epoch == best_step
    assert result.validation["best_score"] == pytest.approx(best)
    assert result.validation["held_out"] == [{"pair": 1, "pixels": 48 * 24, "objects": 2}]
    validate = make_validator(loaded, [_held_out(0, pair, pair.holdout, loaded.meta)], params, "cpu")
    with torch.no_grad():
        assert validate(model)["score"] == pytest.approx(best)
    # The checkpoint records the validation.
    _, meta = read_checkpoint(save_finetuned(tmp_path / "tuned.safetensors", loaded, model, result, [pair], settings))
    record = meta["finetune"]
    assert record["validation"]["best_step"] == best_step and record["settings"]["validate_every"] == 10
    assert [h["epoch"] for h in record["history"] if "val_score" in h] == [10, 20, 30, 40, 50]
    assert record["data"][0]["holdout_pixels"] == 48 * 24


def test_bad_held_out_regions_are_refused(tmp_path, tiny_loaded, make_pair):
    loaded = tiny_loaded("three-branch", tmp_path)
    settings = FinetuneSettings(steps=1, batch_size=1, crop=32)
    pair = make_pair()
    everything = np.ones((48, 72), bool)
    left = np.zeros((48, 72), bool)
    left[:, :24] = True
    bad = {
        "held-out region is empty": CorrectedImage(pair.image, pair.labels, None, np.zeros((48, 72), bool)),
        "does not match": CorrectedImage(pair.image, pair.labels, None, np.ones((10, 10), bool)),
        "nothing is left to train on": CorrectedImage(pair.image, pair.labels, None, everything),
        "does not overlap the checked region": CorrectedImage(pair.image, pair.labels, left, pair.holdout),
        "no corrected object lies mostly inside": CorrectedImage(pair.image, pair.labels, None, left & (
            np.arange(48)[:, None] < 3)),
    }
    for message, p in bad.items():
        with pytest.raises(InstanceTunerError, match=message):
            run(finetune(loaded, [p], settings))
    # Held-out regions covering the checked region of every pair: nothing to train on either.
    with pytest.raises(InstanceTunerError, match="nothing is left to train on"):
        run(finetune(loaded, [CorrectedImage(pair.image, pair.labels, left, left)] * 2, settings))
    with pytest.raises(InstanceTunerError, match="validate_every"):
        FinetuneSettings(validate_every=0)
    # A pair held out entirely is fine while another one trains: it is only validated on.
    whole = CorrectedImage(pair.image, pair.labels, None, everything)
    _, result = run(finetune(loaded, [make_pair(holdout=False), whole], FinetuneSettings(
        steps=2, batch_size=1, crop=32, validate_every=1)))
    assert [h["epoch"] for h in result.history if "val_score" in h] == [1, 2]
    assert [h["pair"] for h in result.validation["held_out"]] == [2]


def test_cancel_before_the_first_validation_keeps_the_start_and_patience_stops_early(tmp_path, tiny_loaded, make_pair,
                                                                                     cancel_after):
    loaded = tiny_loaded("three-branch", tmp_path)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    settings = FinetuneSettings(steps=20, batch_size=1, crop=32, lr=1e-2)
    model, result = cancel_after(lambda token: finetune(loaded, [make_pair()], settings, cancel=token))
    assert result.stopped == "cancelled" and 0 < len(result.history) < 10
    assert result.validation["best_step"] == 0 and result.validation["best_score"] is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # No learning (lr 0): the first validation (step 2) stays the best; patience 3 stops at step 5.
    _, result = run(finetune(loaded, [make_pair()], FinetuneSettings(steps=30, batch_size=1, crop=32, lr=0.0,
                                                                 validate_every=2, patience=3)))
    assert result.stopped == "early stopping" and len(result.history) == 5 and result.validation["best_step"] == 2


def test_split_holdout_and_mostly_inside(make_pair):
    pair = make_pair(region=np.arange(72)[None, :].repeat(48, 0) >= 12)
    train, val = split_holdout(pair)
    assert train.sum() == 48 * 36 and val.sum() == 48 * 24 and not (train & val).any()
    assert split_holdout(make_pair(holdout=False)) == (None, None)
    # Objects 4 and 5 (centres at column 60 and 58) lie in the right-most 24 columns.
    assert set(np.unique(mostly_inside(pair.labels, pair.holdout))) == {0, 4, 5}
    masks = np.stack([pair.labels == i for i in range(1, 6)])
    assert len(mostly_inside(masks, pair.holdout)) == 2
    assert mostly_inside(masks[:0], pair.holdout).shape == (0, 48, 72)


def test_cli_holds_out_the_right_most_fraction_of_each_image(tmp_path, tiny_checkpoint, capsys, make_pair):
    import imageio.v3 as iio
    import tifffile

    from napari_instance_tuner.cli import main

    split = tmp_path / "split"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    for i in range(2):
        pair = make_pair(holdout=False)
        iio.imwrite(split / "images" / f"img{i}.png", pair.image)
        tifffile.imwrite(split / "labels" / f"img{i}.tif", pair.labels.astype(np.uint16))
    out = tmp_path / "tuned.safetensors"
    args = ["finetune", "--model", str(tiny_checkpoint), "--data", str(split), "--out", str(out), "--steps", "4",
            "--batch-size", "1", "--crop", "32"]
    assert main([*args, "--holdout-fraction", "0.34", "--validate-every", "2"]) == 0
    assert "held-out score" in capsys.readouterr().out
    record = read_checkpoint(out)[1]["finetune"]
    assert [h["epoch"] for h in record["history"] if "val_score" in h] == [2, 4]
    assert [d["holdout_pixels"] for d in record["data"]] == [48 * 24] * 2
    assert [h["objects"] for h in record["validation"]["held_out"]] == [2, 2]
    assert main([*args, "--holdout-fraction", "1.5"]) != 0 and "between 0 and 1" in capsys.readouterr().err
