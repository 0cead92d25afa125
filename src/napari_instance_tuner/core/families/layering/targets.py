"""Targets of the layering family: exact object masks, their adjacency, copy-paste crossings and the
fixed target stack S of phase 2 (paper sections 2.1-2.3).

Ground truth is a stack of exact object masks (overlaps kept): the dataset's ``*_instances.npz`` where
present, else one mask per label. Two objects are *adjacent* when their shortest distance is below
t (paper: 15 px at the data's resolution; scaled with the network's pixel scale). The per-batch target
stack (each object's layer from the current model) is built inside the loss (:mod:`.loss`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ...errors import InstanceTunerError
from ...inference.predict import predict_tiled
from ...io.safe_write import write_atomic
from ...progress import run
from ...training.data import Sample

#: The paper's adjacency distance t, in pixels of the data.
ADJACENCY_DISTANCE = 15.0


def object_masks(sample: Sample) -> np.ndarray:
    """bool (K, H, W) exact object masks of a sample (its overlapping stack, else one per label)."""
    if sample.masks is not None:
        return np.asarray(sample.masks, bool)
    ids = np.unique(sample.labels)
    ids = ids[ids > 0]
    return sample.labels[None] == ids[:, None, None] if ids.size else np.zeros((0, *sample.labels.shape), bool)


def adjacency(masks: np.ndarray, distance: float) -> np.ndarray:
    """bool (K, K): objects whose shortest pixel distance is below ``distance`` (overlapping ones included).

    Parameters
    ----------
    masks : np.ndarray
        bool (K, H, W).
    distance : float
        The threshold t in pixels.
    """
    k = masks.shape[0]
    adj = np.zeros((k, k), bool)
    if k < 2:
        return adj
    height, width = masks.shape[1:]
    margin = int(np.ceil(distance)) + 1
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        boxes.append((ys[0], ys[-1], xs[0], xs[-1]) if ys.size else None)
    for i in range(k):
        if boxes[i] is None:
            continue
        y0, y1, x0, x1 = boxes[i]
        y0, x0 = max(0, y0 - margin), max(0, x0 - margin)
        y1, x1 = min(height, y1 + margin + 1), min(width, x1 + margin + 1)
        # Distance of every window pixel to object i (0 inside it).
        dist = cv2.distanceTransform((~masks[i, y0:y1, x0:x1]).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        for j in range(i + 1, k):
            b = boxes[j]
            if b is None or b[0] >= y1 or b[1] < y0 or b[2] >= x1 or b[3] < x0:
                continue
            near = masks[j, y0:y1, x0:x1]
            if near.any() and float(dist[near].min()) < distance:
                adj[i, j] = adj[j, i] = True
    return adj


def paste_crossing(
    rng: np.random.Generator,
    image: np.ndarray,
    masks: np.ndarray,
    adj: np.ndarray,
    donor_image: np.ndarray,
    donor_masks: np.ndarray,
    index: int,
    distance: float,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste object ``index`` of a donor image so that it crosses an object of ``image`` (copy-paste augmentation).

    The donor object's contrast to its own surroundings (its pixels minus the median of a 6 px ring outside
    it, away from other objects) is added to ``image`` inside its mask, after a random 90-degree rotation and
    flip, placed so that a random pixel of it lands on a random pixel of a random object of the crop (or
    anywhere in ``valid`` when the crop has none). Both masks are kept whole: where the objects cross, both
    are ground truth, as in the dataset's overlap annotations. Not in the layering paper, which trains on
    the dataset's own overlaps; added because those are rare (documented in the model card).

    Parameters
    ----------
    rng : np.random.Generator
    image : np.ndarray
        float32 (C, c, c).
    masks : np.ndarray
        bool (k, c, c) objects of the crop.
    adj : np.ndarray
        bool (k, k) their adjacency.
    donor_image : np.ndarray
        float32 (C, H, W), same normalisation.
    donor_masks : np.ndarray
        bool (K, H, W).
    index : int
        The donor object.
    distance : float
        Adjacency threshold t in crop pixels.
    valid : np.ndarray, optional
        bool (c, c): where the crop has image (objects are not pasted onto padding).

    Returns
    -------
    image, masks, adj
        float32 (C, c, c); bool (k + 1, c, c); bool (k + 1, k + 1) -- unchanged inputs when the pasted
        object would not land inside the crop.
    """
    mask = donor_masks[index]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return image, masks, adj
    margin = 7
    y0, y1 = max(0, rows[0] - margin), min(mask.shape[0], rows[-1] + margin + 1)
    x0, x1 = max(0, cols[0] - margin), min(mask.shape[1], cols[-1] + margin + 1)
    obj = mask[y0:y1, x0:x1]
    ring = ndi.binary_dilation(obj, iterations=6) & ~donor_masks[:, y0:y1, x0:x1].any(0)
    patch = donor_image[:, y0:y1, x0:x1]
    surround = np.median(patch[:, ring], axis=1) if ring.any() else np.median(patch.reshape(len(patch), -1), axis=1)
    delta = (patch - surround[:, None, None].astype(np.float32)) * obj
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    obj, delta = np.rot90(obj, turns), np.rot90(delta, turns, axes=(1, 2))
    if flip:
        obj, delta = obj[:, ::-1], delta[:, :, ::-1]
    size = image.shape[1:]
    target = masks.any(0) if masks.shape[0] else (valid if valid is not None else np.ones(size, bool))
    ty, tx = np.nonzero(target)
    if ty.size == 0:
        return image, masks, adj
    pick = int(rng.integers(ty.size))
    oy, ox = np.nonzero(obj)
    own = int(rng.integers(oy.size))
    dy, dx = ty[pick] - oy[own], tx[pick] - ox[own]  # patch origin in the crop
    sy0, sx0 = max(0, -dy), max(0, -dx)
    sy1, sx1 = min(obj.shape[0], size[0] - dy), min(obj.shape[1], size[1] - dx)
    new = np.zeros(size, bool)
    new[sy0 + dy : sy1 + dy, sx0 + dx : sx1 + dx] = obj[sy0:sy1, sx0:sx1]
    if valid is not None:
        new &= valid
    if not new.any():
        return image, masks, adj
    image = image.copy()
    image[:, sy0 + dy : sy1 + dy, sx0 + dx : sx1 + dx] += delta[:, sy0:sy1, sx0:sx1] * new[sy0 + dy : sy1 + dy,
                                                                                          sx0 + dx : sx1 + dx]
    masks = np.concatenate([masks, new[None]])
    k = masks.shape[0]
    grown = np.zeros((k, k), bool)
    grown[: k - 1, : k - 1] = adj
    grown[-1] = grown[:, -1] = adjacency(masks, distance)[-1]
    return image, masks, grown


def fixed_layers(model, samples: list, separate: bool, device: str = "cpu") -> list[np.ndarray]:
    """Each object's layer in the target stack S, from ``model`` on the whole training image (the paper's S).

    The paper builds S once, after phase 1, from the layering of each object's overlap-free part; it is then
    kept through phase 2. Here the model runs on each whole training image at network scale (tiled as in
    inference, :func:`~...inference.predict.predict_tiled`),
    u_i is the mean embedding of object i's overlap-free part, and the layer is ``argmax(u_i)``, or the
    conflict-free assignment of :func:`~.loss.layer_assignment` when ``separate``.

    Parameters
    ----------
    model : LayeringUNet
        The model that starts phase 2 (the best phase-1 weights).
    samples : list
    separate : bool
        Adjacent objects of an image never share a layer.
    device : str

    Returns
    -------
    list of np.ndarray
        int64 (K,) per sample, in the order of its masks; -1 for an object that is overlapped everywhere.
    """
    import torch  # deferred: torch

    from .loss import layer_assignment, mean_embeddings  # deferred: torch

    was_training = model.training
    out = []
    for s in samples:
        if s.masks.shape[0] == 0:
            out.append(np.zeros(0, np.int64))
            continue
        maps = run(predict_tiled(model, s.image.transpose(1, 2, 0), out_channels=1 + model.config.n_layers,
                                 multiple=model.size_divisor, device=device))
        emb = torch.from_numpy(maps[1:])[None]
        masks = torch.from_numpy(s.masks)[None]
        u, counts = mean_embeddings(emb, masks & (masks.sum(1, keepdim=True) == 1))
        adj = torch.from_numpy(s.adjacency)[None] if separate else None
        layer = layer_assignment(u, counts > 0, adj)[0].numpy().astype(np.int64)
        out.append(np.where(counts[0].numpy() > 0, layer, -1))  # -1: no overlap-free part to go by
    model.train(was_training)
    return out


def load_or_assign_layers(model, samples: list, separate: bool, device: str,
                           path: Path | None, resuming: bool) -> list[np.ndarray]:
    """:func:`fixed_layers`, saved to ``path``; a resumed phase 2 (``resuming``) reads them back (same S).

    Raises
    ------
    InstanceTunerError
        When resuming without a saved S that fits the samples: the model here is not the one phase 2
        started from, so its S would differ.
    """
    if resuming:
        counts = [s.masks.shape[0] for s in samples]
        layers = []
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                layers = [saved[f"s{i}"] for i in range(len(samples)) if f"s{i}" in saved.files]
        if [a.size for a in layers] != counts:
            raise InstanceTunerError(
                f"phase 2 of the run in {path.parent if path else '?'} started without fixed target layers (or on "
                "other data); resume it without --target-layers fixed, or start a new run (another --workdir or "
                "--name)")
        return layers
    layers = fixed_layers(model, samples, separate, device)
    if path is not None:
        write_atomic(path, lambda fh: np.savez(fh, **{f"s{i}": a for i, a in enumerate(layers)}), overwrite=True)
    return layers
