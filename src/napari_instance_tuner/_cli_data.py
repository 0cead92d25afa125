"""Checks and loops on annotated data folders that several commands share."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .core.errors import InstanceTunerError
from .core.progress import Progress


def pairs_from_split(data: str):
    from .core.training.data import load_split  # deferred: image readers
    from .core.training.finetune import CorrectedImage  # deferred: torch

    return [CorrectedImage(s.image, s.labels) for s in load_split(data)]


def check_data_folder(data: str) -> None:
    """A clear message for a missing --data folder or one without images/ and labels/, before any work."""
    path = Path(data)
    if not path.exists():
        raise InstanceTunerError(f"--data {data!r} does not exist; give a folder with images/ and labels/")
    if not path.is_dir():
        raise InstanceTunerError(f"--data {data!r} is a file; give a folder with images/ and labels/")
    missing = [name for name in ("images", "labels") if not (path / name).is_dir()]
    if missing:
        raise InstanceTunerError(f"--data {data!r} has no {' or '.join(n + '/' for n in missing)} folder; "
                                 "it must hold images/<id>.png|.tif and labels/<id>.tif")


def channel_notes(loaded, samples, quiet: bool) -> None:
    """Print how each image's channels are converted for the model; refuse counts it cannot take."""
    from .core.io.inputs import channel_note  # deferred: image handling

    in_channels = int(loaded.meta.get("in_channels", 3))
    for s in samples:
        try:
            note = channel_note(np.shape(s.image), in_channels)
        except InstanceTunerError as exc:
            raise InstanceTunerError(f"{getattr(s, 'name', 'image')}: {exc}") from None
        if note and not quiet:
            print(f"note: {getattr(s, 'name', 'image')}: {note}", file=sys.stderr)


def predict_all(loaded, samples, device):
    """The network maps of every sample, one progress record per image."""
    maps = []
    for i, s in enumerate(samples):
        gen = loaded.family.predict_maps(loaded.model, s.image, loaded.meta, device=device)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                maps.append(stop.value)
                break
        yield Progress(i + 1, len(samples), f"network on {s.name}")
    return maps


def images_only(work, prefix: str):
    """Pass on the records of ``work`` whose message starts with ``prefix`` (one per image); return its result."""
    while True:
        try:
            p = next(work)
        except StopIteration as stop:
            return stop.value
        if p.message.startswith(prefix):
            yield p
