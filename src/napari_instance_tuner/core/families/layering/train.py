"""Training data and the two training phases of the layering family (paper sections 2.1-2.3, 3.1-3.2).

Ground truth is a stack of exact object masks (overlaps kept): the dataset's ``*_instances.npz`` where
present, else one mask per label. Two objects are *adjacent* when their shortest distance is below
t (paper: 15 px at the data's resolution; scaled here with the network's pixel scale).

Phase 1 trains L_foreground + L_layering; phase 2 continues from the best phase-1 weights with
L_overlap added. Deliberate differences from the paper: Adam instead of RMSprop (the optimiser of the
core training loop), epochs of a fixed number of random crops and early stopping on validation mean AP
instead of 1000 + 500 full epochs, and no elastic deformation (flips, 90-degree rotations, scale,
gamma in (0.5, 2), blur and noise are used).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ...augment import AugmentConfig, photometric, random_corner, random_scale, random_symmetry
from ...data import Sample
from ...image import DEFAULT_NORMALISATION, normalise, rescale, to_channels_last
from ...progress import CancelToken, Progress
from ...training import TrainConfig, TrainResult, fit, make_validator, read_resume, seed_everything

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


@dataclass
class PreparedSample:
    """A training image at network scale.

    Attributes
    ----------
    image : np.ndarray
        float32 (C, H, W) normalised.
    masks : np.ndarray
        bool (K, H, W) object masks.
    adjacency : np.ndarray
        bool (K, K).
    region : np.ndarray or None
        bool (H, W): train only here (fine-tuning on checked regions).
    layers : np.ndarray or None
        int64 (K,): each object's fixed layer in phase 2's target stack (:func:`fixed_layers`), or None.
    """

    image: np.ndarray
    masks: np.ndarray
    adjacency: np.ndarray
    region: np.ndarray | None = None
    layers: np.ndarray | None = None


def prepare_samples(
    samples: list[Sample], in_channels: int, pixel_scale: float, normalisation: dict | None = None,
    regions: list[np.ndarray | None] | None = None,
) -> list[PreparedSample]:
    """Normalise and rescale samples to network scale; object masks and their adjacency."""
    prepared = []
    for i, s in enumerate(samples):
        image = normalise(to_channels_last(s.image, in_channels), normalisation or DEFAULT_NORMALISATION)
        image = rescale(image, pixel_scale).transpose(2, 0, 1).copy()
        masks = object_masks(s)
        if masks.shape[0]:
            masks = np.stack([rescale(m.view(np.uint8), pixel_scale, order=0) for m in masks]).astype(bool)
            masks = masks[masks.any(axis=(1, 2))]
        else:
            masks = np.zeros((0, *image.shape[1:]), bool)
        region = None
        if regions is not None and regions[i] is not None:
            region = rescale(np.asarray(regions[i]).astype(np.uint8), pixel_scale, order=0).astype(bool)
        prepared.append(PreparedSample(image, masks, adjacency(masks, ADJACENCY_DISTANCE * pixel_scale), region))
    return prepared


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """(K, h, w) -> (K, size, size) with OpenCV (at most 128 channels per call)."""
    if a.shape[1] == size and a.shape[2] == size:
        return a
    if a.shape[0] == 0:
        return np.zeros((0, size, size), a.dtype)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    parts = []
    for start in range(0, a.shape[0], 128):
        chunk = np.ascontiguousarray(a[start : start + 128].transpose(1, 2, 0))
        out = cv2.resize(chunk, (size, size), interpolation=interp)
        parts.append(out.reshape(size, size, -1).transpose(2, 0, 1))
    return np.concatenate(parts)


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
    from scipy import ndimage as ndi

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


@dataclass
class BatchMaker:
    """Random augmented crops with their object masks and adjacency (a ``next_batch`` for ``fit``).

    Attributes
    ----------
    samples : list[PreparedSample]
    crop : int
        Crop edge at network scale (a multiple of the network's size divisor).
    batch_size : int
    augment : AugmentConfig
    p_gamma : float
        Probability of a random gamma correction, gamma in (0.5, 2) (the paper's augmentation).
    p_paste : float
        Probability of pasting one more object (see :func:`paste_crossing`) so that it crosses an object of
        the crop: BBBC010 has few overlapping worms, so overlaps are rare in training otherwise.
    adjacency_distance : float
        The adjacency threshold t at network scale (for pasted objects).
    """

    samples: list[PreparedSample]
    crop: int = 256
    batch_size: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    p_gamma: float = 0.5
    p_paste: float = 0.0
    adjacency_distance: float = ADJACENCY_DISTANCE

    def one(self, rng: np.random.Generator, index: int):
        """One crop: image float32 (C, c, c), masks bool (k, c, c), adjacency bool (k, k), valid float32 (1, c, c),
        fixed layers int64 (k,) (-1 where none: the sample has none, or a pasted object)."""
        s = self.samples[index]
        c = self.crop
        src = max(8, round(c / random_scale(rng, self.augment)))
        image, masks = s.image, s.masks
        valid = np.ones(image.shape[1:], np.uint8) if s.region is None else s.region.view(np.uint8)
        pad_h, pad_w = max(0, src - image.shape[1]), max(0, src - image.shape[2])
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
            masks = np.pad(masks, ((0, 0), (0, pad_h), (0, pad_w)))
            valid = np.pad(valid, ((0, pad_h), (0, pad_w)))
        y, x = random_corner(rng, image.shape[1:], src, valid if s.region is not None else None)
        window = (slice(y, y + src), slice(x, x + src))
        inside = masks[(slice(None), *window)]
        keep = np.flatnonzero(inside.any(axis=(1, 2)))
        crop_masks = _resize(inside[keep].view(np.uint8), c, nearest=True).astype(bool)
        crop_image = _resize(image[(slice(None), *window)], c, nearest=False)
        crop_valid = _resize(valid[window][None], c, nearest=True)
        crop_image, crop_masks, crop_valid = random_symmetry(rng, crop_image, crop_masks, crop_valid)
        present = crop_masks.any(axis=(1, 2))
        keep, crop_masks = keep[present], crop_masks[present]
        adj = s.adjacency[np.ix_(keep, keep)]
        layers = s.layers[keep] if s.layers is not None else np.full(keep.size, -1, np.int64)
        if self.p_paste > 0 and rng.random() < self.p_paste:
            donor = self.samples[int(rng.integers(len(self.samples)))]
            if donor.masks.shape[0]:
                obj = int(rng.integers(donor.masks.shape[0]))
                crop_image, crop_masks, adj = paste_crossing(
                    rng, crop_image, crop_masks, adj, donor.image, donor.masks, obj,
                    self.adjacency_distance * c / src, valid=crop_valid[0] > 0,
                )
                layers = np.concatenate([layers, np.full(crop_masks.shape[0] - layers.size, -1, np.int64)])
        crop_image = photometric(rng, crop_image, self.augment)
        if self.augment.enabled and rng.random() < self.p_gamma:
            crop_image = np.clip(crop_image, 0, None) ** np.float32(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        return crop_image.astype(np.float32), crop_masks, adj, crop_valid.astype(np.float32), layers

    def __call__(self, rng: np.random.Generator):
        """x float32 (B, C, c, c), :class:`~.loss.LayeringTargets`, valid float32 (B, 1, c, c) as tensors.

        The targets carry fixed layers when the samples have them (:func:`fixed_layers`), else None.
        """
        import torch

        from .loss import LayeringTargets

        parts = [self.one(rng, int(i)) for i in rng.integers(0, len(self.samples), self.batch_size)]
        k = max(1, max(p[1].shape[0] for p in parts))
        c = self.crop
        objects = np.zeros((len(parts), k, c, c), bool)
        adj = np.zeros((len(parts), k, k), bool)
        layers = np.full((len(parts), k), -1, np.int64)
        for b, (_, m, a, _, lay) in enumerate(parts):
            objects[b, : m.shape[0]] = m
            adj[b, : a.shape[0], : a.shape[0]] = a
            layers[b, : lay.size] = lay
        x = torch.from_numpy(np.stack([p[0] for p in parts]))
        valid = torch.from_numpy(np.stack([p[3] for p in parts]))
        fixed = torch.from_numpy(layers) if any(s.layers is not None for s in self.samples) else None
        return x, LayeringTargets(torch.from_numpy(objects), torch.from_numpy(adj), fixed), valid


def fixed_layers(model, samples: list[PreparedSample], separate: bool, device: str = "cpu") -> list[np.ndarray]:
    """Each object's layer in the target stack S, from ``model`` on the whole training image (the paper's S).

    The paper builds S once, after phase 1, from the layering of each object's overlap-free part; it is then
    kept through phase 2. Here the model runs on each whole training image at network scale (tiled as in
    inference, :func:`~...inference.predict_tiled`),
    u_i is the mean embedding of object i's overlap-free part, and the layer is ``argmax(u_i)``, or the
    conflict-free assignment of :func:`~.loss.layer_assignment` when ``separate``.

    Parameters
    ----------
    model : LayeringUNet
        The model that starts phase 2 (the best phase-1 weights).
    samples : list[PreparedSample]
    separate : bool
        Adjacent objects of an image never share a layer.
    device : str

    Returns
    -------
    list of np.ndarray
        int64 (K,) per sample, in the order of its masks; -1 for an object that is overlapped everywhere.
    """
    import torch

    from ...inference import predict_tiled
    from ...progress import run
    from .loss import layer_assignment, mean_embeddings

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


def _load_or_assign_layers(model, samples: list[PreparedSample], separate: bool, device: str,
                           path: Path | None, resuming: bool) -> list[np.ndarray]:
    """:func:`fixed_layers`, saved to ``path``; a resumed phase 2 (``resuming``) reads them back (same S).

    Raises
    ------
    InstanceTunerError
        When resuming without a saved S that fits the samples: the model here is not the one phase 2
        started from, so its S would differ.
    """
    if resuming:
        from ...errors import InstanceTunerError

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
        from ...safe_write import write_atomic

        write_atomic(path, lambda fh: np.savez(fh, **{f"s{i}": a for i, a in enumerate(layers)}), overwrite=True)
    return layers


@dataclass(frozen=True)
class PhaseEpochs:
    """Maximum epochs of the two phases (``TrainOptions.family_options`` keys ``phase1_epochs``, ``phase2_epochs``)."""

    phase1: int
    phase2: int


def train_layering(
    train_samples: list[Sample],
    val_samples: list[Sample],
    meta: dict,
    options,
    *,
    resume_path=None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, tuple[object, TrainResult]]:
    """Build the model described by ``meta`` and train it in two phases; returns (best model, result).

    ``options`` is a :class:`~...jobs.TrainOptions`; ``options.family_options`` may set
    ``phase1_epochs`` and ``phase2_epochs`` (default: ``options.train.epochs`` split 2:1 as the paper's
    1000:500), ``sparse_weight`` (lambda, default 0.1), ``paste_probability`` (copy-paste crossings, see
    :func:`paste_crossing`; default 0), ``separate_targets`` (phase 2's S keeps adjacent objects in different
    layers, see :func:`~.loss.layer_assignment`; default False, the paper's), ``layer_bce_weight`` (phase 2:
    weight of a cross-entropy between the layering logits and S, see :func:`~.loss.layer_cross_entropy`;
    default 0, the paper's), ``fixed_targets`` (phase 2's S is assigned once per whole training image by
    the model that starts phase 2 and kept, the paper's way, see :func:`fixed_layers`; default False: S is
    derived from the current model on every batch) and ``init_weights`` (a checkpoint of the same architecture to start
    from, e.g. to continue a run on another machine); ``options.train.max_minutes`` is shared
    between the phases in the same proportion. Each phase has its own resume file; a
    finished phase 1 is not repeated when phase 2 resumes. The history records carry ``"phase"``.
    """
    from .family import LayeringFamily
    from .loss import LayeringLoss

    family = LayeringFamily()
    config: TrainConfig = options.train
    extra = dict(options.family_options)
    phase1 = int(extra.get("phase1_epochs", max(1, round(config.epochs * 2 / 3))))
    phase2 = int(extra.get("phase2_epochs", max(0, config.epochs - phase1)))
    sparse_weight = float(extra.get("sparse_weight", 0.1))
    paste = float(extra.get("paste_probability", 0.0))
    separate = bool(extra.get("separate_targets", False))
    fixed = bool(extra.get("fixed_targets", False))
    layer_bce = float(extra.get("layer_bce_weight", 0.0))
    if not (np.isfinite(layer_bce) and layer_bce >= 0):
        raise ValueError(f"layer_bce_weight must be a finite number >= 0, got {layer_bce}")
    init = extra.get("init_weights")
    # A wall-time limit is shared between the phases in proportion to their epochs.
    minutes1 = minutes2 = None
    if config.max_minutes is not None:
        minutes1 = config.max_minutes * phase1 / max(1, phase1 + phase2)
        minutes2 = config.max_minutes - minutes1
    meta["training"]["layering"] = {
        "phase1_epochs": phase1, "phase2_epochs": phase2, "sparse_weight": sparse_weight,
        "adjacency_distance_px": ADJACENCY_DISTANCE, "optimiser_note": f"{config.optimizer} (paper: RMSprop 1e-4)",
        "paste_probability": paste, "separate_targets": separate, "layer_bce_weight": layer_bce,
        "fixed_targets": fixed,
        "init_weights": str(init) if init else None,
    }
    seed_everything(config.seed)
    model = family.build_model(meta["architecture"])
    if init:
        from ...checkpoint import read_checkpoint

        state, _ = read_checkpoint(init)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    prepared = prepare_samples(train_samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"))
    batches = BatchMaker(prepared, crop=options.crop, batch_size=options.batch_size,
                         augment=AugmentConfig(enabled=options.augment), p_paste=paste,
                         adjacency_distance=ADJACENCY_DISTANCE * meta["pixel_scale"])
    validate = None
    if val_samples:
        from ...metrics import aggregated_jaccard_index, average_precision

        metrics = {"mean_ap": lambda p, r: average_precision(p, r)["mean_ap"], "aji": aggregated_jaccard_index}
        validate = make_validator(family, val_samples, meta, family.default_params(meta), metrics, "mean_ap",
                                  options.device)
    resume_path = Path(resume_path) if resume_path else None
    resume1 = resume2 = None
    if resume_path is not None:
        resume1 = resume_path.with_name(resume_path.stem + ".phase1.pt")
        resume2 = resume_path.with_name(resume_path.stem + ".phase2.pt")
    history: list[dict] = []
    wall = 0.0
    if not (resume2 is not None and resume2.is_file()):
        result1 = yield from fit(model, batches, LayeringLoss(1, sparse_weight), validate,
                                 replace(config, epochs=phase1, max_minutes=minutes1), device=options.device, resume_path=resume1,
                                 cancel=cancel)
        history += [{**r, "phase": 1} for r in result1.history]
        wall += result1.wall_seconds
        if result1.stopped == "cancelled" or phase2 == 0:
            return model, replace(result1, history=history)
    else:
        saved = read_resume(resume1) if resume1.is_file() else None
        if saved is not None:
            history += [{**r, "phase": 1} for r in saved["state"]["history"]]
            wall += saved["state"]["elapsed"]
    # Phase 2 starts from the best phase-1 weights (fit leaves them in the model) with fresh optimiser state.
    if fixed:
        yield Progress(0, 1, "phase 2: assigning each training object its layer")
        model.to(options.device or "cpu")
        layers_path = resume_path.with_name(resume_path.stem + ".phase2-layers.npz") if resume_path else None
        resuming = resume2 is not None and resume2.is_file()
        for s, lay in zip(prepared, _load_or_assign_layers(model, prepared, separate, options.device or "cpu",
                                                             layers_path, resuming)):
            s.layers = lay
    result2 = yield from fit(model, batches, LayeringLoss(2, sparse_weight, separate, layer_bce), validate,
                             replace(config, epochs=phase2, seed=config.seed + 1, max_minutes=minutes2), device=options.device,
                             resume_path=resume2, cancel=cancel)
    history += [{**r, "phase": 2} for r in result2.history]
    return model, replace(result2, history=history, wall_seconds=wall + result2.wall_seconds)


def finetune_batches(model, meta: dict, pairs: list, settings) -> BatchMaker:
    """Batches for fine-tuning on corrected images (``CorrectedImage``), only inside checked regions."""
    samples = [Sample(f"pair{i}", p.image, np.asarray(p.labels).astype(np.int32), getattr(p, "masks", None))
               for i, p in enumerate(pairs)]
    prepared = prepare_samples(samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"),
                               regions=[p.region for p in pairs])
    largest = max(max(s.image.shape[1:]) for s in prepared)
    crop = -(-min(settings.crop, largest) // model.size_divisor) * model.size_divisor
    return BatchMaker(prepared, crop=crop, batch_size=settings.batch_size,
                      augment=AugmentConfig(enabled=settings.augment))
