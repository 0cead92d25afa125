"""Fine-tune a loaded model on user-corrected labels (optionally only inside checked regions).

The family's own targets are generated from the corrected labels; batch-norm statistics stay fixed and
the encoder can be frozen, so a few corrected objects teach the model without wrecking what it knew.
The result is a new checkpoint whose metadata records its parent (sha256), the data it was tuned on,
the settings and the loss history; the parent file is never overwritten.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoint import LoadedModel, save_checkpoint
from .errors import InstanceTunerError, WeightsError
from .progress import CancelToken, Progress
from .training import TrainConfig, TrainResult, fit


@dataclass(frozen=True)
class FinetuneSettings:
    """What the user chooses in the fine-tune widget or on the command line."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 4
    crop: int = 256
    augment: bool = True
    freeze_encoder: bool = True
    seed: int = 0


@dataclass
class CorrectedImage:
    """One training pair: the image, its corrected labels, and optionally where they were checked.

    Attributes
    ----------
    image : np.ndarray
        (H, W) or (H, W, C), any real dtype.
    labels : np.ndarray
        Integer (H, W) corrected instance labels.
    region : np.ndarray or None
        bool (H, W): True where the labels were checked; training uses only these pixels.
    """

    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray | None = None


def _check(pairs: list[CorrectedImage]) -> None:
    if not pairs:
        raise InstanceTunerError("choose at least one (image, corrected labels) pair to fine-tune on")
    for i, p in enumerate(pairs):
        if np.shape(p.labels) != np.shape(p.image)[:2]:
            raise InstanceTunerError(
                f"pair {i + 1}: labels of shape {np.shape(p.labels)} do not match the image's {np.shape(p.image)[:2]}"
            )
        if p.region is not None and not np.any(p.region):
            raise InstanceTunerError(f"pair {i + 1}: the checked region is empty")


def finetune(
    loaded: LoadedModel,
    pairs: list[CorrectedImage],
    settings: FinetuneSettings,
    *,
    device: str = "cpu",
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, tuple[object, TrainResult]]:
    """Fine-tune a copy of ``loaded.model``; yields progress per step; returns (new model, result).

    The loaded model is left untouched, so cancelling keeps the user's current model and maps valid;
    a cancelled run returns the copy as of its last completed step.
    """
    _check(pairs)
    model = copy.deepcopy(loaded.model)
    batches, loss_fn, params = loaded.family.finetune_setup(model, loaded.meta, pairs, settings)
    config = TrainConfig(epochs=settings.steps, steps_per_epoch=1, lr=settings.lr, seed=settings.seed,
                         checkpoint_every_s=float("inf"), freeze_batchnorm=True)
    result = yield from fit(model, batches, loss_fn, None, config, device=device, cancel=cancel, params=params)
    model.requires_grad_(True)
    return model.cpu(), result


def save_finetuned(
    path: str | Path, parent: LoadedModel, model, result: TrainResult, pairs: list[CorrectedImage],
    settings: FinetuneSettings,
) -> Path:
    """Write the fine-tuned model as a new checkpoint recording its parent; never overwrites the parent."""
    path = Path(path)
    if path.resolve() == Path(parent.path).resolve():
        raise WeightsError(f"refusing to overwrite the loaded weights {parent.path.name!r}; choose a new file name")
    meta = copy.deepcopy(parent.meta)
    meta.pop("format_version", None)
    meta["name"] = path.stem
    meta["parent"] = {"name": parent.name, "file": parent.path.name, "sha256": parent.sha256}
    meta["finetune"] = {
        "settings": asdict(settings),
        "data": [
            {"shape": list(np.shape(p.image)), "objects": int(len(np.unique(p.labels)) - 1),
             "region_pixels": None if p.region is None else int(np.count_nonzero(p.region))}
            for p in pairs
        ],
        "history": result.history,
        "stopped": result.stopped,
        "seconds": round(result.wall_seconds, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return save_checkpoint(path, model.state_dict(), meta, half=False)
