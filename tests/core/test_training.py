import contextlib

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import ParamsError
from napari_instance_tuner.core.families.three_branch.loss import weighted_bce
from napari_instance_tuner.core.families.three_branch.train import BatchMaker, prepare_samples
from napari_instance_tuner.core.progress import CancelToken, run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.training import loop as training
from napari_instance_tuner.core.training.augment import AugmentConfig, photometric, random_symmetry
from napari_instance_tuner.core.training.data import Sample
from napari_instance_tuner.core.training.loop import TrainConfig, bfloat16_supported, fit, supervised_step


def _toy_samples(disks_labels, n=3):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        labels = disks_labels((48, 48), ((14, 14), (14, 34), (34, 24)), 8 + i % 2)
        image = np.stack([(labels > 0) * 150 + rng.integers(0, 60, labels.shape)] * 3, -1).astype(np.uint8)
        samples.append(Sample(f"s{i}", image, labels))
    return samples


@pytest.fixture
def batch_maker(disks_labels):
    """``batch_maker(**kw) -> BatchMaker`` of 32 px crops of three toy samples (made afresh on every call)."""

    def make(**kw):
        return BatchMaker(prepare_samples(_toy_samples(disks_labels), 3, 1.0), crop=32, batch_size=2, pixel_scale=1.0,
                          **kw)

    return make


def test_batches_have_consistent_targets_and_padding_is_masked(batch_maker):
    maker = batch_maker(augment=AugmentConfig(enabled=False))
    maker.crop = 64  # larger than the 48 px images: padded, and padding excluded from the loss
    x, y, valid = maker(np.random.default_rng(0))
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 3, 64, 64) and valid.shape == (2, 1, 64, 64)
    assert valid.sum() == 2 * 48 * 48
    assert torch.all(y[valid.expand_as(y) == 0] == 0)


def test_weighted_bce_balances_sparse_targets():
    logits = torch.zeros(1, 2, 10, 10)
    targets = torch.zeros(1, 2, 10, 10)
    targets[0, 0, :5] = 1  # balanced
    targets[0, 1, 0, :5] = 1  # 5 % positives
    valid = torch.ones(1, 1, 10, 10)
    _, parts = weighted_bce(logits, targets, valid)
    assert parts[0] == pytest.approx(np.log(2), rel=1e-4)
    assert parts[1] == pytest.approx(np.log(2) * (95 + 5 * 10) / 100, rel=1e-4)  # positive weight capped at 10
    _, masked = weighted_bce(logits, targets, torch.zeros(1, 1, 10, 10))
    assert masked == [0.0, 0.0]


def test_augmentations_keep_image_and_targets_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 1, 2] = 1
    target = image.copy()
    for _ in range(8):
        a, b = random_symmetry(rng, image, target)
        assert np.array_equal(a, b) and a.sum() == 1
    jittered = photometric(rng, np.ones((3, 8, 8), np.float32), AugmentConfig(p_color=1, p_blur=0, p_noise=0))
    assert jittered.shape == (3, 8, 8) and not np.allclose(jittered, 1)
    assert np.array_equal(photometric(rng, image, AugmentConfig(enabled=False)), image)


@pytest.fixture
def train_tiny(batch_maker, tiny_arch):
    """``train_tiny(tmp_path, epochs, resume=None, cancel=None, workers=0) -> (model, TrainResult)``: a seeded run."""

    def train(tmp_path, epochs, resume=None, cancel=None, workers=0):
        torch.manual_seed(3)
        model = get_family("three-branch").build_model(tiny_arch)
        config = TrainConfig(epochs=epochs, steps_per_epoch=2, seed=3, checkpoint_every_s=0, patience=100,
                             loader_workers=workers)
        validate = lambda m: {"score": -float(sum(p.detach().abs().sum() for p in m.parameters()))}
        result = run(fit(model, batch_maker(), get_family("three-branch").training_step, validate, config,
                             resume_path=resume, cancel=cancel))
        return model, result

    return train


def test_training_is_deterministic_with_a_seed(tmp_path, train_tiny):
    m1, r1 = train_tiny(tmp_path, 3)
    m2, r2 = train_tiny(tmp_path, 3)
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert r1.stopped == "max epochs" and len(r1.history) == 3


def test_resume_continues_exactly(tmp_path, train_tiny):
    _, straight = train_tiny(tmp_path, 4)
    resume = tmp_path / "run.resume.pt"
    train_tiny(tmp_path, 2, resume=resume)
    assert resume.is_file()
    _, resumed = train_tiny(tmp_path, 4, resume=resume)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert np.allclose([h["loss"] for h in resumed.history], [h["loss"] for h in straight.history], rtol=1e-5)


def test_cancel_returns_best_weights_so_far(tmp_path, train_tiny):
    token = CancelToken()
    token.cancel()
    _, result = train_tiny(tmp_path, 5, cancel=token)
    assert result.stopped == "cancelled" and result.history == []


def test_loader_workers_make_the_same_batches_whatever_their_number(tmp_path, train_tiny):
    _, one = train_tiny(tmp_path, 3, workers=1)
    m2, two = train_tiny(tmp_path, 3, workers=2)
    _, serial = train_tiny(tmp_path, 3)
    losses = [h["loss"] for h in two.history]
    assert losses == [h["loss"] for h in one.history]
    assert losses != [h["loss"] for h in serial.history]  # workers seed each batch by its index instead
    resume = tmp_path / "workers.resume.pt"
    train_tiny(tmp_path, 2, resume=resume, workers=2)
    m3, resumed = train_tiny(tmp_path, 3, resume=resume, workers=2)
    assert np.allclose([h["loss"] for h in resumed.history], losses, rtol=1e-5)
    assert all(torch.allclose(a.float(), b.float(), atol=1e-5) for a, b in zip(m2.state_dict().values(), m3.state_dict().values()))


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizer_choice(name, kind):
    from napari_instance_tuner.core.training.loop import make_optimizer

    weight = torch.nn.Parameter(torch.ones(3))
    optimiser = make_optimizer(TrainConfig(lr=0.1, optimizer=name, weight_decay=0.01), [weight])
    assert type(optimiser) is kind and optimiser.param_groups[0]["weight_decay"] == 0.01
    (weight ** 2).sum().backward()
    optimiser.step()
    assert torch.all(weight < 1)  # a step downhill
    if name == "sgd":
        assert optimiser.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_sgd_training_runs_and_is_recorded(tmp_path, tiny_arch, batch_maker):
    model = get_family("three-branch").build_model(tiny_arch)
    config = TrainConfig(epochs=2, steps_per_epoch=2, lr=0.01, optimizer="sgd", checkpoint_every_s=0, patience=100)
    resume = tmp_path / "sgd.resume.pt"
    result = run(fit(model, batch_maker(), get_family("three-branch").training_step, None, config, resume_path=resume))
    assert len(result.history) == 2 and np.isfinite([h["loss"] for h in result.history]).all()
    saved = torch.load(resume, weights_only=True)
    assert "momentum_buffer" in next(iter(saved["optimiser"]["state"].values()))


def test_loader_workers_start_after_opencv_used_its_thread_pool():
    """Regression: workers forked after OpenCV ran its thread pool must run cv2 (setNumThreads in them hung)."""
    import subprocess
    import sys

    code = """
import cv2, numpy as np, torch
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.loop import TrainConfig, fit, supervised_step
cv2.setNumThreads(2)
cv2.resize(np.zeros((3000, 3000), np.float32), (1500, 1500))  # the pool's threads now exist

def batch(rng):
    x = cv2.resize(rng.random((64, 64)).astype(np.float32), (32, 32))
    return torch.from_numpy(x)[None, None], torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)

model = torch.nn.Conv2d(1, 1, 3, padding=1)
loss = lambda out, y, valid: (((out - y) ** 2).mean(), {})
result = run(fit(model, batch, lambda m, b: supervised_step(m, b, loss), None, TrainConfig(epochs=2, steps_per_epoch=2, loader_workers=2)))
print("steps", len(result.history) * 2, "threads", cv2.getNumThreads())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 4 threads 2" in done.stdout  # trained; this process's OpenCV settings are untouched


def _fit_tiny(epochs, decay, resume=None, score_offset=0.0):
    """A 1x1 convolution fitted to a fixed target; returns (result, weights seen, models validated)."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 1)
    seen = []  # the weight before every step
    validated = []  # the weight of every model validate() is given, in call order

    def next_batch(rng):
        x = torch.from_numpy(rng.normal(size=(2, 1, 4, 4)).astype(np.float32))
        return x, 3 * x + 1, torch.ones(2, 1, 4, 4)

    def loss_fn(out, y, valid):
        seen.append(model.weight.detach().clone())
        return ((out - y) ** 2).mean(), {}

    def validate(m):
        validated.append(m.weight.detach().clone())
        return {"score": score_offset + len(validated)}  # each validation beats the last: the last one is kept

    config = TrainConfig(epochs=epochs, steps_per_epoch=3, lr=0.1, seed=1, checkpoint_every_s=0, patience=100,
                         ema_decay=decay)
    result = run(fit(model, next_batch, lambda m, b: supervised_step(m, b, loss_fn), validate, config, resume_path=resume))
    return result, seen, validated


def test_ema_selects_and_returns_the_moving_average_and_records_the_raw_score():
    decay = 0.6
    result, seen, validated = _fit_tiny(2, decay)
    assert len(validated) == 4  # per validation: the average, then the raw weights
    raw_after = seen[1:] + [validated[3]]  # the raw weights after steps 1..6
    average = raw_after[0]  # the first update copies the weights
    for w in raw_after[1:]:
        average = decay * average + (1 - decay) * w
    assert torch.allclose(validated[2], average, atol=1e-6)
    assert torch.allclose(result.best_state["weight"], average, atol=1e-6)
    assert not torch.allclose(average, validated[3], atol=1e-3)  # the raw weights differ from their average
    assert all("val_raw_score" in h for h in result.history)
    assert result.history[-1]["val_score"] == 3.0 and result.history[-1]["val_raw_score"] == 4.0


def test_ema_is_resumed_with_the_run(tmp_path):
    straight, _, _ = _fit_tiny(4, 0.6)
    resume = tmp_path / "ema.resume.pt"
    _fit_tiny(2, 0.6, resume=resume)
    resumed, _, _ = _fit_tiny(4, 0.6, resume=resume, score_offset=100)
    assert torch.allclose(resumed.best_state["weight"], straight.best_state["weight"], atol=1e-6)
    assert torch.allclose(resumed.best_state["bias"], straight.best_state["bias"], atol=1e-6)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def _fit_recording_dtypes(amp: bool):
    """Fit a 3x3 convolution for 3 steps; returns (forward output dtypes, dtypes the loss saw, weight dtype)."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    forward_dtypes, loss_dtypes = [], []
    model.register_forward_hook(lambda m, i, out: forward_dtypes.append(out.dtype))

    def next_batch(rng):
        x = torch.from_numpy(rng.normal(size=(2, 1, 8, 8)).astype(np.float32))
        return x, 2 * x, torch.ones(2, 1, 8, 8)

    def loss_fn(out, y, valid):
        loss_dtypes.append(out.dtype)
        return ((out - y) ** 2).mean(), {}

    config = TrainConfig(epochs=1, steps_per_epoch=3, lr=0.05, seed=1, checkpoint_every_s=0, amp=amp)
    result = run(fit(model, next_batch, lambda m, b: supervised_step(m, b, loss_fn), None, config))
    return forward_dtypes, loss_dtypes, result.best_state["weight"].dtype


@pytest.mark.skipif(not bfloat16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_amp_runs_the_forward_pass_in_bfloat16_and_keeps_weights_and_loss_in_float32():
    forward, loss, weight = _fit_recording_dtypes(amp=True)
    assert forward == [torch.bfloat16] * 3
    assert loss == [torch.float32] * 3 and weight == torch.float32
    forward, loss, weight = _fit_recording_dtypes(amp=False)
    assert forward == [torch.float32] * 3 and weight == torch.float32


def test_amp_is_refused_on_a_device_without_bfloat16(monkeypatch):
    monkeypatch.setattr(training, "bfloat16_supported", lambda device: False)
    with pytest.raises(ParamsError, match="bfloat16"):
        _fit_recording_dtypes(amp=True)
    assert isinstance(training.training_autocast("cpu", False), contextlib.nullcontext)


def _conv_bn(weight=2.0):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        model[0].weight.fill_(weight)
    return model


def _shifted_batches(rng):
    x = torch.from_numpy(rng.normal(3.0, 1.0, size=(4, 1, 8, 8)).astype(np.float32))
    return x, x, torch.ones(4, 1, 8, 8)


def test_recalibrate_batchnorm_recomputes_statistics_and_restores_the_model():
    model = _conv_bn().eval()
    assert training.recalibrate_batchnorm(model, _shifted_batches, np.random.default_rng(0), 8)
    bn = model[1]
    assert bn.running_mean.item() == pytest.approx(6.0, abs=0.1)  # 2 * N(3, 1): mean 6, variance 4
    assert bn.running_var.item() == pytest.approx(4.0, rel=0.1)
    assert bn.momentum == 0.1 and not model.training and model[0].weight.item() == 2.0
    plain = torch.nn.Conv2d(1, 1, 1)
    assert not training.recalibrate_batchnorm(plain, _shifted_batches, np.random.default_rng(0), 8)
    lists = lambda rng: ([torch.zeros(1, 8, 8)], None, None)  # detection-style inputs: left alone
    untouched = _conv_bn()
    assert not training.recalibrate_batchnorm(untouched, lists, np.random.default_rng(0), 2)
    assert untouched[1].running_mean.item() == 0.0


def test_ema_is_validated_with_batchnorm_statistics_of_its_own_weights():
    torch.manual_seed(0)
    model = _conv_bn()
    means = []

    def validate(m):
        means.append(m[1].running_mean.item())
        return {"score": float(len(means))}

    loss = lambda out, y, valid: ((out - 0.5 * y) ** 2).mean()
    config = TrainConfig(epochs=1, steps_per_epoch=3, lr=1e-3, seed=1, checkpoint_every_s=0, ema_decay=0.99)
    run(fit(model, _shifted_batches, lambda m, b: supervised_step(m, b, lambda *a: (loss(*a), {})), validate, config))
    # Without recalibration the average's running mean would be the momentum-0.1 estimate of 3 steps (~1.6);
    # recomputed, it is the mean of the conv's output (about 2 * 3).
    assert means[0] == pytest.approx(6.0 * model[0].weight.item() / 2.0, rel=0.05)
