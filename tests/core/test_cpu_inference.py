"""CPU inference speed-ups: batch norm folded exactly, thread policy, Mask R-CNN limits and mixed precision."""

import contextlib

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.families.maskrcnn import model as maskrcnn_model
from napari_instance_tuner.core.families.maskrcnn.model import build_maskrcnn
from napari_instance_tuner.core.families.three_branch.model import ThreeBranchConfig, ThreeBranchUNet
from napari_instance_tuner.core.inference import cpu
from napari_instance_tuner.core.inference.predict import predict_tiled
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.synthetic import synthetic_nuclei

#: A tiny Mask R-CNN (as in test_maskrcnn_family.py).
TINY = {"backbone": "tiny_fpn", "base_channels": 8, "fpn_channels": 32, "representation_size": 64,
        "mask_head_layers": 2, "mask_head_channels": 16}


def _trained_like(conv_type: str = "separable") -> ThreeBranchUNet:
    """A small three-branch network whose batch norms hold non-trivial running statistics and affine terms."""
    torch.manual_seed(0)
    net = ThreeBranchUNet(ThreeBranchConfig(base_channels=4, depth=2, conv_type=conv_type))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("conv_type", ["standard", "separable", "space_depth_separable"])
def test_folded_batchnorm_gives_the_same_outputs(conv_type):
    net = _trained_like(conv_type)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(2, 3, 32, 32)
    folded = cpu.inference_copy(net)
    assert folded.folded_batchnorms == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_bn  # the original keeps them
    with torch.inference_mode():
        expected, got = net(x), folded(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert float((got - expected).abs().max()) < 1e-3 * float(expected.abs().max())


def test_inference_copy_is_cached_until_the_weights_change():
    net = _trained_like()
    first = cpu.inference_copy(net)
    assert cpu.inference_copy(net) is first
    assert "_napari_instance_tuner_inference_copy" not in dict(net.named_modules())  # not a submodule
    assert set(net.state_dict()) == set(_trained_like().state_dict())  # checkpoints see no extra keys
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        net.decoders["foreground"].head.bias.add_(1.0)  # e.g. a fine-tuning step
        again = cpu.inference_copy(net)
        assert again is not first
        assert torch.allclose(again(x), net(x), atol=1e-4)


def test_a_network_without_batch_norm_is_not_copied():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    assert cpu.inference_copy(net) is net


def test_predict_tiled_runs_the_folded_copy_and_leaves_the_model_as_it_was():
    net = _trained_like()
    image = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    probs = run(predict_tiled(net, image, out_channels=3, tile_size=32, overlap=8, multiple=4))
    with torch.inference_mode():
        padded = np.pad(image, ((0, 0), (0, 0), (0, 0)))
        whole = torch.sigmoid(net(torch.from_numpy(padded.transpose(2, 0, 1).copy())[None]))[0].numpy()
    assert probs.shape == (3, 40, 40)
    assert np.abs(probs - whole).max() < 0.15  # tiles see less context at their edges than the whole image
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize(("cores", "busy", "most", "expected"), [
    (2, 0, None, 2),  # an idle machine: every core
    (2, 1, None, 1),  # one busy process on 2 cores: one thread, steady
    (2, 7, None, 1),  # never fewer than one
    (16, 1, None, 15),
    (16, 0.4, None, 16),  # rounds to whole cores
    (16, 0, 4, 4),  # torch's configured count caps it
    (1, 0, None, 1),
])
def test_thread_policy_takes_the_cores_left_free(cores, busy, most, expected):
    assert cpu.choose_threads(cores, busy, most) == expected


def test_inference_threads_reads_the_machine_or_the_override(monkeypatch):
    monkeypatch.setattr(cpu, "available_cores", lambda: 8)
    monkeypatch.setattr(cpu, "busy_cores", lambda: 3.0)
    monkeypatch.delenv("NAPARI_INSTANCE_TUNER_THREADS", raising=False)
    assert cpu.inference_threads() == 5
    assert cpu.inference_threads(most=2) == 2
    monkeypatch.setenv("NAPARI_INSTANCE_TUNER_THREADS", "3")
    assert cpu.inference_threads() == 3
    assert cpu.busy_cores() == 3.0


def test_cpu_threads_restores_the_thread_count():
    before = torch.get_num_threads()
    with cpu.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --- Mask R-CNN ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_scene():
    """A tiny random-weight detector (it finds hundreds of permissive boxes) and a dense synthetic scene."""
    torch.manual_seed(0)
    model = build_maskrcnn(dict(TINY, box_detections_per_img=40, rpn_pre_nms_top_n_test=100,
                                rpn_post_nms_top_n_test=100)).eval()
    image, _ = synthetic_nuclei((128, 128), seed=3)
    x = torch.from_numpy(np.repeat(image[None].astype(np.float32) / max(float(image.max()), 1.0), 3, 0))[None]
    return model, x


def test_detection_limits_grow_with_the_area_beyond_the_reference(dense_scene, monkeypatch):
    model, x = dense_scene
    fixed = model.detect(x)[0]
    assert len(fixed["scores"]) == 40  # a dense scene fills the per-image limit
    monkeypatch.setattr(maskrcnn_model, "LIMITS_AREA", 64 * 64)  # the 128 x 128 image is 4 reference areas
    scaled = model.detect(x)[0]
    assert 40 < len(scaled["scores"]) <= 160
    # what the fixed limits found is still found (more proposals may replace a box by a near twin)
    from torchvision.ops import box_iou

    best = box_iou(fixed["boxes"], scaled["boxes"]).max(dim=1).values
    assert float((best > 0.7).float().mean()) >= 0.9
    assert model.roi_heads.detections_per_img == 40 and model.rpn._post_nms_top_n["testing"] == 100  # restored


def test_detection_limits_are_unchanged_up_to_the_reference_area(dense_scene, monkeypatch):
    model, x = dense_scene
    monkeypatch.setattr(maskrcnn_model, "LIMITS_AREA", 128 * 128)
    at_reference = model.detect(x)[0]
    monkeypatch.setattr(maskrcnn_model, "LIMITS_AREA", 256 * 256)  # a smaller image never lowers the limits
    smaller = model.detect(x)[0]
    assert len(at_reference["scores"]) == len(smaller["scores"]) == 40
    np.testing.assert_array_equal(at_reference["boxes"].numpy(), smaller["boxes"].numpy())


def test_mixed_precision_wraps_only_the_convolutions_and_restores_the_model(dense_scene):
    model, x = dense_scene
    keys = list(model.state_dict())
    plain = model.detect(x)[0]
    seen = []

    @contextlib.contextmanager
    def recording():
        seen.append(torch.is_autocast_enabled("cpu"))
        yield

    same = model.detect(x, autocast=recording)[0]  # a context that changes nothing: identical detections
    for key in ("boxes", "scores", "masks"):
        assert same[key].dtype == torch.float32
        torch.testing.assert_close(same[key], plain[key])
    assert len(seen) == len(maskrcnn_model.MIXED_PRECISION_PARTS)
    assert list(model.state_dict()) == keys  # the wrappers are gone
    assert not any(type(m).__name__ == "_Autocast" for m in model.modules())


def test_bfloat16_convolutions_keep_float32_boxes_and_nearly_the_same_detections(dense_scene):
    model, x = dense_scene
    plain = model.detect(x)[0]
    bf16 = model.detect(x, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))[0]
    assert bf16["boxes"].dtype == torch.float32 and bf16["masks"].dtype == torch.float32
    # the top detections are the same boxes to within a pixel (bfloat16 rounds features, not coordinates)
    top = plain["boxes"][:10]
    dist = torch.cdist(top, bf16["boxes"]).min(dim=1).values
    assert float(dist.max()) < 1.0


def test_an_outer_autocast_does_not_round_the_detector_boxes(dense_scene):
    from napari_instance_tuner.core.registry import get_family

    model, x = dense_scene
    family = get_family("maskrcnn")
    meta = {"family": "maskrcnn", "in_channels": 3, "pixel_scale": 1.0, "inference_amp": True,
            "normalisation": {"kind": "percentile", "low": 1.0, "high": 99.8}}
    image = (x[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    plain = run(family.predict_maps(model, image, meta, device="cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as `predict --amp` wraps every window
        wrapped = run(family.predict_maps(model, image, meta, device="cpu"))
    np.testing.assert_array_equal(wrapped.extra["boxes"], plain.extra["boxes"])
