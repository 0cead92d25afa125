"""Fine-tuning improves the *metric* of a model whose first prediction is wrong, for every trainable family;
cancelling leaves a usable model and the weights file on disk untouched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_instance_tuner.core.family import scorable
from napari_instance_tuner.core.params import params_from_dict
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune

#: Post-processing that lets a barely trained tiny model show objects (no centroid rule, small S_min).
LENIENT = {
    "three-branch": {"subtract_boundaries": False, "require_centroid": False, "min_size": 20, "grow_back": 0,
                     "close_radius": 0, "open_radius": 0, "fg_threshold": 0.5},
    "layering": {"threshold": 0.5, "min_size": 20, "allow_overlaps": True},
}


@pytest.fixture
def make_pair(disks_labels):
    """``make_pair() -> CorrectedImage``: three disks on a 48 x 48 image."""

    def make() -> CorrectedImage:
        labels = disks_labels((48, 48), ((13, 13), (13, 35), (35, 24)), 8)
        rng = np.random.default_rng(0)
        image = (np.stack([(labels > 0) * 150 + 40] * 3, -1) + rng.integers(0, 30, (48, 48, 3))).astype(np.uint8)
        return CorrectedImage(image, labels)

    return make


def _metric(loaded, model, pair: CorrectedImage) -> float:
    params = params_from_dict(loaded.family.Params, LENIENT[loaded.family.name])
    maps = run(loaded.family.predict_maps(model, pair.image, loaded.meta, device="cpu"))
    return loaded.family.score(scorable(loaded.family.postprocess(maps, params)), pair.labels)


@pytest.mark.parametrize("family", ["three-branch", "layering"])
def test_finetuning_improves_the_metric_of_a_wrong_model(family, tmp_path, tiny_loaded, make_pair):
    loaded = tiny_loaded(family, tmp_path)
    pair = make_pair()
    before = _metric(loaded, loaded.model, pair)
    settings = FinetuneSettings(steps=80, lr=1e-2, batch_size=2, crop=32, augment=False, freeze_encoder=False)
    model, result = run(finetune(loaded, [pair], settings))
    after = _metric(loaded, model, pair)
    assert before < 0.2  # random weights: the first prediction is wrong
    assert after > before + 0.5, (before, after)
    assert len(result.history) == 80


@pytest.mark.parametrize("family", ["three-branch", "layering", "maskrcnn"])
def test_cancel_mid_run_leaves_a_working_model_and_an_unchanged_file(family, tmp_path, tiny_loaded, make_pair,
                                                                       cancel_after):
    loaded = tiny_loaded(family, tmp_path)
    digest = hashlib.sha256(loaded.path.read_bytes()).hexdigest()
    settings = FinetuneSettings(steps=40, batch_size=1, crop=32)
    model, result = cancel_after(lambda token: finetune(loaded, [make_pair()], settings, cancel=token))
    assert result.stopped == "cancelled" and 0 < len(result.history) < 40
    maps = run(loaded.family.predict_maps(model, make_pair().image, loaded.meta, device="cpu"))
    assert all(np.isfinite(a).all() for a in maps.arrays.values())
    assert hashlib.sha256(loaded.path.read_bytes()).hexdigest() == digest == loaded.sha256
