"""A resumable training loop as a progress generator (Adam, AdamW or SGD; early stopping on a validation score).

Optionally the loop keeps an exponential moving average (EMA) of the weights and batch-norm statistics
(``torch.optim.swa_utils.AveragedModel``); then the averaged weights are validated, selected and returned,
and the raw weights' validation is recorded beside them (``val_raw_score``). Before each validation the
average's batch-norm statistics are recomputed from a few training batches run through the averaged weights
(:func:`recalibrate_batchnorm`, as ``torch.optim.swa_utils.update_bn`` does for SWA): averaged statistics
do not match averaged weights when the statistics drift fast (seen on GlaS: the first batch norm's running
variance fell 6x within 300 steps, and the average's maps were flat, scoring 0 while the raw weights scored
0.65).

The family supplies ``next_batch(rng) -> (x, y, valid)`` tensors, ``loss_fn(logits, y, valid) ->
(loss, parts)`` and ``validate(model) -> dict`` with a ``"score"`` (higher is better). The loop saves a
resume file every ``checkpoint_every_s`` seconds (model, optimiser, RNG states, history, best weights);
resume files hold only tensors and plain values and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ParamsError
from .progress import CancelToken, Progress


#: Optimisers :func:`fit` can use.
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs (the paper: 150).
    steps_per_epoch : int
        Optimiser steps per epoch.
    lr : float
        Adam learning rate (paper: 1e-3).
    patience : int
        Early stopping: epochs without validation improvement (paper: 20).
    validate_every : int
        Validate every this many epochs.
    seed : int
    checkpoint_every_s : float
        Seconds between resume files.
    max_minutes : float or None
        Stop (keeping the best weights) after this wall time.
    freeze_batchnorm : bool
        Keep batch-norm statistics fixed (fine-tuning on a few small crops would corrupt them).
    optimizer : str
        ``"adam"`` (default: trains the small from-scratch models with least tuning), ``"adamw"`` (decoupled
        weight decay) or ``"sgd"`` (momentum 0.9, as torchvision's detection recipe and the Mask R-CNN papers).
    weight_decay : float
        L2 (SGD, Adam) or decoupled (AdamW) weight decay.
    ema_decay : float
        0 (default): no averaging. In (0, 1): after every step the averaged weights become
        ``decay * average + (1 - decay) * weights`` (buffers too); validation, model selection and the
        returned weights use the average. 0.99 averages over about the last 100 steps.
    loader_workers : int
        0: batches are made in this process from one running random generator. N > 0: N
        ``torch.utils.data.DataLoader`` worker processes make them ahead of the GPU, batch ``i`` from a
        generator seeded by ``(seed, i)``, so the batches do not depend on N (a GPU waits on one
        CPU core otherwise).
    amp : bool
        Run the forward pass under ``torch.autocast`` with bfloat16 (the weights, the optimiser and the loss
        stay float32: mixed precision). On a CPU with AVX512-BF16 or AMX it is 2-3x faster than float32
        (``benchmarks/training_step_speed.py``); :func:`fit` refuses it where the device has no bfloat16
        support, since it would be slower there, not faster. Validation always runs in float32.
    """

    epochs: int = 150
    steps_per_epoch: int = 10
    lr: float = 1e-3
    patience: int = 20
    validate_every: int = 1
    seed: int = 0
    checkpoint_every_s: float = 180.0
    max_minutes: float | None = None
    freeze_batchnorm: bool = False
    optimizer: str = "adam"
    weight_decay: float = 0.0
    loader_workers: int = 0
    ema_decay: float = 0.0
    amp: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class TrainResult:
    """What training returns: the best weights (by validation score) and the history."""

    best_state: dict
    best_score: float
    best_epoch: int
    history: list[dict]
    wall_seconds: float
    stopped: str


def selection_score(f1: float, dice: float) -> float:
    """The validation score that training and auto-tuning maximise: mean of object F1 and object Dice."""
    return 0.5 * (f1 + dice)


def make_validator(
    family,
    samples: list,
    meta: dict,
    params,
    metrics: dict[str, Callable[[Any, Any], float]],
    score: str | Callable[[dict], float],
    device: str = "cpu",
) -> Callable[[Any], dict]:
    """A ``validate(model) -> dict`` for :func:`fit`: per-image metrics averaged over ``samples``.

    Parameters
    ----------
    family : Family
    samples : list[Sample]
        Validation images; each is scored against :attr:`~.data.Sample.reference`.
    meta : dict
        Checkpoint metadata (normalisation, pixel scale) for ``predict_maps``.
    params : dataclass
        Post-processing parameters.
    metrics : dict
        Name -> ``metric(pred, reference) -> float``; ``pred`` as :func:`~.family.scorable` gives it.
    score : str or callable
        The metric name whose mean is ``"score"`` (higher is better), or ``score(means) -> float``.
    device : str

    Returns
    -------
    callable
        ``validate(model)`` returning ``{"score": ..., **mean of every metric}``.
    """
    from .family import scorable
    from .progress import run

    def validate(model) -> dict:
        values: dict[str, list[float]] = {name: [] for name in metrics}
        for s in samples:
            maps = run(family.predict_maps(model, s.image, meta, device=device))
            pred = scorable(family.postprocess(maps, params))
            for name, metric in metrics.items():
                values[name].append(float(metric(pred, s.reference)))
        means = {name: float(np.mean(v)) for name, v in values.items()}
        return {"score": float(means[score] if isinstance(score, str) else score(means)), **means}

    return validate


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and ask for deterministic algorithms where cheap."""
    import torch

    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuned kernels would make GPU runs differ


class _IndexedBatches:
    """Map-style dataset: item ``i`` is ``next_batch(default_rng((seed, i)))`` (one whole batch)."""

    def __init__(self, next_batch: Callable, seed: int) -> None:
        self.next_batch = next_batch
        self.seed = seed

    def __getitem__(self, index: int):
        return self.next_batch(np.random.default_rng((self.seed, int(index))))


def _as_made(batch):
    """The batch exactly as ``next_batch`` made it (DataLoader would otherwise convert numpy arrays)."""
    return batch


def _batch_stream(next_batch: Callable, rng: np.random.Generator, config: TrainConfig, first_step: int):
    """Batches for steps ``first_step, first_step + 1, ...``: from ``rng`` or from DataLoader workers."""
    if config.loader_workers <= 0:
        while True:
            yield next_batch(rng)
    from torch.utils.data import DataLoader

    total = config.epochs * config.steps_per_epoch
    loader = DataLoader(
        _IndexedBatches(next_batch, config.seed), batch_size=None, sampler=range(first_step, total),
        num_workers=config.loader_workers, prefetch_factor=4, collate_fn=_as_made,
    )
    # No worker_init_fn calling cv2.setNumThreads: after fork, reconfiguring OpenCV's thread pool waits
    # forever on threads that were not copied (found on a GPU run; tests/core/test_training.py).
    yield from loader


def make_optimizer(config: TrainConfig, params):
    """The torch optimiser ``config.optimizer`` names, over ``params``."""
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)


def bfloat16_supported(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU whose oneDNN
    has bfloat16 kernels (AVX512-BF16 or AMX; elsewhere it is emulated and slower than float32)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if str(device) == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def training_autocast(device: str, amp: bool):
    """The context of a training forward pass: bfloat16 autocast when ``amp``, else none.

    Raises
    ------
    ParamsError
        ``amp`` on a device without native bfloat16 (see :func:`bfloat16_supported`).
    """
    import torch

    if not amp:
        return contextlib.nullcontext()
    if not bfloat16_supported(device):
        raise ParamsError(f"mixed precision (amp) needs native bfloat16 on {device!r}, which it lacks here "
                         "(a CPU needs AVX512-BF16 or AMX); train without amp")
    return torch.autocast(str(device).split(":")[0], dtype=torch.bfloat16)


def refuse_amp(family, amp: bool) -> None:
    """Raise :class:`ParamsError` when ``amp`` is asked of a family that trains in float32 only."""
    if amp and not family.supports_amp:
        raise ParamsError(f"mixed precision (amp) is for the U-Net families; {family.name} trains in float32")


#: Training batches whose activations recompute the EMA's batch-norm statistics before a validation.
EMA_BN_BATCHES = 8


def recalibrate_batchnorm(model, next_batch: Callable, rng: np.random.Generator, n_batches: int, *,
                          device: str = "cpu", memory_format=None) -> bool:
    """Recompute ``model``'s batch-norm running statistics from ``n_batches`` batches (a plain average).

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place: each ``_BatchNorm`` with running statistics gets the mean and variance of its
        inputs over the batches; the rest of the model is untouched; its train/eval mode is restored.
    next_batch : callable
        ``next_batch(rng) -> (x, ...)``; ``x`` a float tensor (B, C, H, W).
    rng : np.random.Generator
        Drives ``next_batch`` (pass a generator of its own, so the training stream is not consumed).
    n_batches : int

    Returns
    -------
    bool
        False (nothing changed) when the model has no such batch norm or the batches are not image tensors
        (e.g. detection models, whose inputs are lists).
    """
    import torch

    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or n_batches <= 0:
        return False
    inputs = [next_batch(rng)[0] for _ in range(n_batches)]
    if not all(isinstance(x, torch.Tensor) and x.ndim == 4 for x in inputs):
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x in inputs:
            x = x.to(device)
            model(x.contiguous(memory_format=memory_format) if memory_format is not None else x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True


def make_ema(model, decay: float):
    """An ``AveragedModel`` of ``model`` keeping an exponential moving average of weights and buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fit(
    model,
    next_batch: Callable[[np.random.Generator], tuple[Any, Any, Any]],
    loss_fn: Callable,
    validate: Callable[[Any], dict] | None,
    config: TrainConfig,
    *,
    device: str = "cpu",
    resume_path: str | Path | None = None,
    cancel: CancelToken | None = None,
    params: list | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train ``model`` in place; yields a :class:`Progress` per step; returns :class:`TrainResult`.

    Cancelling (``cancel``) stops after the current step and returns the best weights so far.
    """
    import torch

    from .llvm_guard import prepare_torch_training

    prepare_torch_training()  # the optimiser imports Triton, which crashes beside napari's OpenGL LLVM
    autocast = training_autocast(device, config.amp)  # refuses amp where it would be slow, before any work
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device)
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimiser = make_optimizer(config, params if params is not None else list(model.parameters()))
    state = {"epoch": 0, "history": [], "best_score": -np.inf, "best_epoch": -1, "elapsed": 0.0}
    best_state = copy.deepcopy(model.state_dict())
    resume_path = Path(resume_path) if resume_path else None
    saved: dict = {}
    if resume_path is not None and resume_path.is_file():
        saved = read_resume(resume_path, device)
        try:
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            best_state = saved["best_state"]
            state = saved["state"]
            rng.bit_generator.state = saved["numpy_rng"]
            torch.set_rng_state(saved["torch_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ParamsError(_resume_refusal(resume_path, exc)) from None
        for group in optimiser.param_groups:  # a resumed run takes the learning rate it is given now
            group["lr"] = config.lr
    # Made after a resume file is read: a run that did not average before starts its average there.
    ema = make_ema(model, config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None and "ema" in saved:
        ema.load_state_dict(saved["ema"])
    selected = ema.module if ema is not None else model  # the weights validated, selected and returned

    def save_resume() -> None:
        if resume_path is None:
            return
        resume_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = resume_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "best_state": best_state,
                "state": state,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
            tmp,
        )
        tmp.replace(resume_path)

    start = time.monotonic() - state["elapsed"]
    last_save = time.monotonic()
    total_steps = config.epochs * config.steps_per_epoch
    stopped = "max epochs"
    batches = _batch_stream(next_batch, rng, config, state["epoch"] * config.steps_per_epoch)
    while state["epoch"] < config.epochs:
        model.train()
        if config.freeze_batchnorm:
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        losses = []
        for step in range(config.steps_per_epoch):
            if cancel is not None and cancel.cancelled:
                stopped = "cancelled"
                break
            x, y, valid = next(batches)
            x = x.to(device).contiguous(memory_format=memory_format)
            with autocast:
                logits = model(x)
            if config.amp:  # the loss in float32
                logits = logits.float()
            loss, parts = loss_fn(logits, y.to(device), valid.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(float(loss.detach()))
            done = state["epoch"] * config.steps_per_epoch + step + 1
            yield Progress(done, total_steps, f"epoch {state['epoch'] + 1}", {"loss": losses[-1], "parts": parts})
        if stopped == "cancelled":
            break
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "loss": float(np.mean(losses)), "time": time.monotonic() - start}
        if validate is not None and state["epoch"] % config.validate_every == 0:
            if ema is not None and not config.freeze_batchnorm:
                recalibrate_batchnorm(selected, next_batch, np.random.default_rng([config.seed, state["epoch"]]),
                                      EMA_BN_BATCHES, device=device, memory_format=memory_format)
            model.eval()
            selected.eval()
            with torch.no_grad():
                metrics = validate(selected)
                if ema is not None:
                    record["val_raw_score"] = float(validate(model)["score"])
            record.update({f"val_{k}": v for k, v in metrics.items()})
            if metrics["score"] > state["best_score"]:
                state["best_score"] = float(metrics["score"])
                state["best_epoch"] = state["epoch"]
                best_state = copy.deepcopy(selected.state_dict())
        elif validate is None:
            best_state = copy.deepcopy(selected.state_dict())
            state["best_epoch"] = state["epoch"]
        state["history"].append(record)
        state["elapsed"] = time.monotonic() - start
        yield Progress(state["epoch"] * config.steps_per_epoch, total_steps, f"epoch {state['epoch']} done", record)
        if time.monotonic() - last_save > config.checkpoint_every_s:
            save_resume()
            last_save = time.monotonic()
        if validate is not None and state["epoch"] - state["best_epoch"] >= config.patience:
            stopped = "early stopping"
            break
        if config.max_minutes is not None and state["elapsed"] > 60 * config.max_minutes:
            stopped = "time limit"
            break
    batches.close()  # stops DataLoader workers
    state["elapsed"] = time.monotonic() - start
    save_resume()
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_state, state["best_score"], state["best_epoch"], state["history"], state["elapsed"], stopped)


def read_resume(path: str | Path, map_location: Any = "cpu") -> dict:
    """A resume file's content, read with ``torch.load(weights_only=True)`` (tensors and plain values only).

    Raises
    ------
    ParamsError
        If the file is corrupt, truncated, not a resume file, or holds anything but tensors and plain values;
        the message says to delete it (or choose another work folder) to start afresh.
    """
    import torch

    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is unusable
        raise ParamsError(_resume_refusal(path, exc)) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or "epoch" not in saved["state"]:
        raise ParamsError(_resume_refusal(path, None))
    return saved


def _resume_refusal(path: str | Path, exc: BaseException | None) -> str:
    kind = "" if exc is None else f" ({type(exc).__name__})"
    return (f"the resume file {str(path)!r} is corrupt, from another version or not a resume file{kind}; "
            "delete it to start afresh, or give another --workdir")
