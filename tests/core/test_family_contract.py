"""One contract every model family keeps (segmentation_models_pytorch's pattern: a base test class, one small
subclass per family): the six files, its option dataclasses, whether it keeps overlaps, predict -> postprocess
on a tiny random-weight model, and one training step (also in mixed precision where the CPU has bfloat16)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.family import Instances, Maps
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import family_names, get_family
from napari_instance_tuner.core.synthetic import synthetic_nuclei
from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings
from napari_instance_tuner.core.training.loop import bfloat16_supported, training_autocast
from napari_instance_tuner.core.training.options import declared_options

FAMILY_FILES = ("family.py", "model.py", "targets.py", "loss.py", "postprocess.py", "train.py")


class FamilyContract:
    """Checks every family passes; a subclass names the family and a tiny architecture."""

    family_name: str
    architecture: ClassVar[dict]

    @pytest.fixture
    def family(self):
        return get_family(self.family_name)

    @pytest.fixture
    def meta(self, family):
        arch = family.architecture({**family.TrainOptions().architecture(), **self.architecture}, 3)
        return {"name": "tiny", "family": self.family_name, "architecture": arch, "in_channels": 3,
                "pixel_scale": 1.0, "normalisation": {"kind": "percentile", "low": 1.0, "high": 99.8},
                "postprocess": {}}

    @pytest.fixture
    def model(self, family, meta):
        torch.manual_seed(0)
        return family.build_model(meta["architecture"])

    @pytest.fixture
    def sample(self):
        image, labels = synthetic_nuclei((64, 64), seed=1)
        return image, labels.astype(np.int32)

    def test_folder_has_the_six_files(self, family):
        folder = Path(__import__(type(family).__module__, fromlist=["x"]).__file__).parent
        assert [f for f in FAMILY_FILES if not (folder / f).is_file()] == []

    def test_params_and_train_options_are_dataclasses_that_declare_their_flags(self, family):
        assert dataclasses.is_dataclass(family.Params) and dataclasses.is_dataclass(family.TrainOptions)
        options = family.TrainOptions()
        assert isinstance(options.architecture(), dict)
        for name, declaration in declared_options(family.TrainOptions):
            assert declaration["flag"] == "--" + name.replace("_", "-")  # the field is the flag's argparse dest
            assert declaration["help"] and getattr(options, name) == declaration["default"]

    def test_predict_then_postprocess(self, family, model, meta, sample):
        image, _ = sample
        maps = run(family.predict_maps(model, image, meta))
        assert isinstance(maps, Maps) and tuple(maps.shape) == image.shape[:2]
        instances = family.postprocess(maps, family.default_params(meta))
        assert isinstance(instances, Instances)
        assert instances.labels.dtype == np.uint32 and instances.labels.shape == image.shape[:2]

    def test_keeps_overlaps_says_whether_postprocess_returns_masks(self, family, model, meta, sample):
        maps = run(family.predict_maps(model, sample[0], meta))
        default = family.default_params(meta)
        variants = [default]
        if hasattr(default, "allow_overlaps"):  # a family where keeping overlaps is a parameter
            variants.append(dataclasses.replace(default, allow_overlaps=True))
        returns_masks = [family.postprocess(maps, p).masks is not None for p in variants]
        assert any(returns_masks) == family.keeps_overlaps

    def _batch(self, family, model, meta, sample):
        image, labels = sample
        settings = FinetuneSettings(crop=32, batch_size=2, augment=False)
        batches = family.finetune_batches(model, meta, [CorrectedImage(image, labels)], settings)
        return batches(np.random.default_rng(0))

    def _step(self, family, model, batch):
        model.train()
        loss, parts = family.training_step(model, batch)
        assert loss.dtype == torch.float32 and loss.ndim == 0 and np.isfinite(float(loss.detach()))
        assert isinstance(parts, (dict, list))  # the loss terms, for the progress records
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
        return float(loss.detach())

    def test_one_training_step_gives_a_finite_loss_with_gradients(self, family, model, meta, sample):
        self._step(family, model, self._batch(family, model, meta, sample))

    @pytest.mark.skipif(not bfloat16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
    def test_a_mixed_precision_step_where_the_cpu_has_bfloat16(self, family, model, meta, sample):
        assert family.supports_amp
        with training_autocast("cpu", True):
            self._step(family, model, self._batch(family, model, meta, sample))


class TestThreeBranch(FamilyContract):
    family_name = "three-branch"
    architecture: ClassVar[dict] = {"base_channels": 4, "depth": 2}


class TestLayering(FamilyContract):
    family_name = "layering"
    architecture: ClassVar[dict] = {"base_channels": 4, "depth": 2, "n_layers": 3, "head_channels": 4}


class TestMaskRCNN(FamilyContract):
    family_name = "maskrcnn"
    architecture: ClassVar[dict] = {"base_channels": 4, "anchor_sizes": [4, 8, 16, 32, 64], "rpn_pre_nms_top_n_test": 100,
                    "rpn_post_nms_top_n_test": 100}


def test_every_registered_family_has_a_contract_test():
    tested = {cls.family_name for cls in FamilyContract.__subclasses__()}
    assert tested == set(family_names())


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([[0, 1, 1], [2, 0, 3]], np.uint32), 3),  # consecutive ids
        (np.array([[0, 7, 7], [0, 0, 200]], np.int32), 2),  # gaps
        (np.zeros((4, 5), np.uint32), 0),  # nothing
        (np.zeros((0, 5), np.uint32), 0),  # an empty image
        (np.array([[-3, 5, 5], [0, 9, 0]], np.int32), 2),  # a negative value: not an object, np.unique counts
        (np.array([[0, 2**40, 3]], np.uint64), 2),  # ids a histogram cannot hold: np.unique counts
        (np.array([[0, 2**24 + 5, 1]], np.uint32), 2),  # a large id: np.unique counts
    ],
)
def test_instances_count_is_the_number_of_distinct_positive_ids(labels, expected):
    assert Instances(labels=labels).count == expected == len(set(labels[labels > 0].tolist()))
