"""A resumable training loop as a progress generator (Adam, AdamW or SGD; early stopping on a validation score).

Optionally the loop keeps an exponential moving average (EMA) of the weights and batch-norm statistics
(``torch.optim.swa_utils.AveragedModel``); then the averaged weights are validated, selected and returned,
and the raw weights' validation is recorded beside them (``val_raw_score``). Before each validation the
average's batch-norm statistics are recomputed from a few training batches run through the averaged weights
(:func:`recalibrate_batchnorm`, as ``torch.optim.swa_utils.update_bn`` does for SWA): averaged statistics
do not match averaged weights when the statistics drift fast (seen on GlaS: the first batch norm's running
variance fell 6x within 300 steps, and the average's maps were flat, scoring 0 while the raw weights scored
0.65).

The family supplies ``next_batch(rng) -> batch`` (a tuple whose elements have ``.to(device)``), its
``training_step(model, batch) -> (loss, parts)`` (:meth:`~..family.Family.training_step`: the forward pass and
the loss, run under bfloat16 autocast with ``amp``; :func:`supervised_step` for networks that map images to
logits) and ``validate(model) -> dict`` with a ``"score"`` (higher is better). The loop saves a
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

from ..errors import ParamsError
from ..progress import CancelToken, Progress
from .batches import batch_stream, to_device
from .schedule import learning_rate
from .weight_average import EMA_BN_BATCHES, make_ema, recalibrate_batchnorm

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
    lr_decay_from : int or None
        None (default, the paper's): a constant ``lr``. E: constant until epoch E, then a cosine decay to zero
        at ``epochs`` (:func:`.schedule.learning_rate`).
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
    lr_decay_from: int | None = None
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
        if self.lr_decay_from is not None and not 0 <= self.lr_decay_from < self.epochs:
            raise ValueError(f"the learning-rate decay must start at an epoch in [0, {self.epochs}), "
                             f"got {self.lr_decay_from}")

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


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and ask for deterministic algorithms where cheap."""
    import torch  # deferred: torch

    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuned kernels would make GPU runs differ


def make_optimizer(config: TrainConfig, params):
    """The torch optimiser ``config.optimizer`` names, over ``params``."""
    import torch  # deferred: torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)


def bfloat16_supported(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU whose oneDNN
    has bfloat16 kernels (AVX512-BF16 or AMX; elsewhere it is emulated and slower than float32)."""
    import torch  # deferred: torch

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
    import torch  # deferred: torch

    if not amp:
        return contextlib.nullcontext()
    if not bfloat16_supported(device):
        raise ParamsError(f"mixed precision (amp) needs native bfloat16 on {device!r}, which it lacks here "
                         "(a CPU needs AVX512-BF16 or AMX); train without amp")
    return torch.autocast(str(device).split(":")[0], dtype=torch.bfloat16)


def refuse_amp(family, amp: bool) -> None:
    """Raise :class:`ParamsError` when ``amp`` is asked of a family that trains in float32 only
    (:attr:`~..family.Family.supports_amp`; every family shipped now supports it)."""
    if amp and not family.supports_amp:
        raise ParamsError(f"mixed precision (amp) is not available for the {family.name} family; "
                          f"{family.name} trains in float32")


def supervised_step(model, batch: tuple, loss_fn: Callable) -> tuple[Any, dict]:
    """The training step of a network that maps images to logits: ``loss_fn(model(x), y, valid)``.

    Parameters
    ----------
    model : torch.nn.Module
    batch : tuple
        ``(x, y, valid)``: x float32 (B, C, H, W) on the model's device; ``y`` and ``valid`` whatever
        ``loss_fn`` takes.
    loss_fn : callable
        ``loss_fn(logits, y, valid) -> (loss, parts)``.

    Returns
    -------
    loss : torch.Tensor
        Scalar float32. Under :func:`fit`'s bfloat16 autocast only the forward pass runs in bfloat16: the
        logits are cast back and the loss is computed in float32 outside autocast.
    parts : dict or list
        The loss terms, as ``loss_fn`` gives them.
    """
    import torch  # deferred: torch

    x, y, valid = batch
    logits = model(x)
    with torch.autocast(logits.device.type, enabled=False):
        return loss_fn(logits.float(), y, valid)


def fit(
    model,
    next_batch: Callable[[np.random.Generator], tuple],
    training_step: Callable[[Any, tuple], tuple[Any, dict]],
    validate: Callable[[Any], dict] | None,
    config: TrainConfig,
    *,
    device: str = "cpu",
    resume_path: str | Path | None = None,
    cancel: CancelToken | None = None,
    params: list | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train ``model`` in place; yields a :class:`Progress` per step; returns :class:`TrainResult`.

    Each step moves ``next_batch(rng)`` to ``device`` and calls ``training_step(model, batch)`` (under
    bfloat16 autocast with ``config.amp``), then steps the optimiser on the returned loss. Cancelling (``cancel``) stops after the current step and returns the best weights so far.
    """
    import torch  # deferred: torch

    from .llvm_guard import prepare_torch_training  # deferred: imports torch's compiler settings

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
    batches = batch_stream(next_batch, rng, config, state["epoch"] * config.steps_per_epoch)
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
            batch = to_device(next(batches), device, memory_format)
            with autocast:
                loss, parts = training_step(model, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            # set on every step: the schedule's rate, and a resumed run takes the rate it is given now
            rate = learning_rate(config.lr, state["epoch"] * config.steps_per_epoch + step,
                                 config.steps_per_epoch, config.epochs, config.lr_decay_from)
            for group in optimiser.param_groups:
                group["lr"] = rate
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
                                      EMA_BN_BATCHES, device=device, memory_format=memory_format,
                                      training_step=training_step)
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
    import torch  # deferred: torch

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
