"""The learning-rate schedule: constant by default, or a cosine decay to zero over the last epochs."""

import itertools
import math

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.loop import TrainConfig, fit
from napari_instance_tuner.core.training.schedule import learning_rate


def test_the_rate_is_constant_then_half_a_cosine_to_zero():
    rates = [learning_rate(0.4, s, 10, 6, 2) for s in range(60)]
    assert rates[:21] == [0.4] * 21  # epochs 0 and 1, and the decay's first step
    assert rates[40] == pytest.approx(0.2)  # half way through the 40 decaying steps
    assert all(a > b for a, b in itertools.pairwise(rates[20:]))
    assert 0 < rates[-1] < 0.4 * (1 - math.cos(math.pi / 40))  # the last step's rate: small, not zero
    assert [learning_rate(0.4, s, 10, 6, None) for s in (0, 59)] == [0.4, 0.4]


def test_the_decay_must_start_within_the_run():
    with pytest.raises(ValueError, match="decay must start"):
        TrainConfig(epochs=5, lr_decay_from=5)


class _Slope(torch.nn.Module):
    """One weight whose loss is the weight itself: the gradient is always 1, so Adam moves it by the rate."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _steps(epochs, decay_from, resume=None):
    """Fit :class:`_Slope` (Adam, 4 steps per epoch); returns the weight's change at each step of this call."""
    model, before = _Slope(), []

    def step(m, batch):
        before.append(float(m.w.detach()))
        return m.w.sum() + 0 * batch[0].sum(), {}

    config = TrainConfig(epochs=epochs, steps_per_epoch=4, lr=0.01, lr_decay_from=decay_from, checkpoint_every_s=0)
    next_batch = lambda rng: (torch.zeros(1),)
    run(fit(model, next_batch, step, None, config, resume_path=resume))
    return -np.diff(before + [float(model.w.detach())])


def test_fit_steps_at_the_scheduled_rates_and_a_resumed_run_keeps_them(tmp_path):
    moves = _steps(5, 2)
    expected = [learning_rate(0.01, s, 4, 5, 2) for s in range(20)]
    assert np.allclose(moves, expected, rtol=1e-4)
    assert moves[-1] < 0.001 < moves[7]  # decayed at the end, constant before epoch 2
    resume = tmp_path / "decay.resume.pt"
    first = _steps(3, 2, resume)  # stops inside the decay (for a 3-epoch run the decay would end at epoch 3) ...
    assert np.allclose(first[:8], expected[:8], rtol=1e-4)
    resumed = _steps(5, 2, resume)  # ... and a 5-epoch run resumed from it takes the 5-epoch rates from step 12
    assert np.allclose(resumed, expected[12:], rtol=1e-4)
    assert np.allclose(_steps(6, None, resume), 0.01, rtol=1e-4)  # resumed without decay: the rate given now
    assert np.allclose(_steps(2, None), 0.01, rtol=1e-4)  # no decay: the constant rate
