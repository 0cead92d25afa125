"""Batch segmentation of folders and glob patterns, resumable, serial or on dask workers.

Outputs go to one folder next to ``recipe.json`` (how they were made). Per image:

* an image that fits in one tile: ``<stem>.tif`` (uint labels) and, for families whose objects overlap,
  ``<stem>_instances.npz`` (the objects packed in a few label planes, :mod:`..io.mask_stack`; files of the
  older layout, a bool (N, H, W) ``masks`` stack, are still read);
* a larger image (streamed, see :mod:`.streaming`): ``<stem>.zarr`` (uint32 labels) and, for families whose
  objects overlap, ``<stem>_objects.npz`` (per-object boxes and bit-packed masks, see :func:`write_objects`);
* ``<stem>.tuner.json``: a sidecar with the recipe's key, the input's size and time, the outputs and counts.

Inputs are listed by :mod:`.batch_inputs`, reports and the summary table made by :mod:`.batch_report`.

Resume: an image whose sidecar has the same recipe key and input signature, with its outputs present, is
skipped. Small images are independent tasks (one per worker at a time); a large image's tiles are the tasks,
stitched here as they come back.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import read_metadata, with_card_settings
from ..io.export import write_label_tiff, write_mask_stack
from ..io.inputs import channel_note, check_image_file, header_shape
from ..io.recipe import recipe_text
from ..io.safe_write import atomic_folder, remove_stale_temporaries, write_atomic, write_text
from ..progress import Progress, run
from ..registry import get_family
from ..session import SegmentSession
from ..training.data import read_image
from .batch_folder import RECIPE, SIDECAR, check_output_folder, folder_lock, output_stem, recipe_name
from .batch_inputs import expand_inputs, input_signature
from .batch_report import ImageReport, one_line, summary_table
from .distributed import ModelRef, SerialExecutor, limit_threads
from .resample import model_pixel_size
from .slide_segment import needs_model_scale, segment_file
from .streaming import StreamSettings, open_image, segment_tile, stream_segment

__all__ = ["BatchJob", "ImageReport", "check_outputs", "expand_inputs", "input_signature", "recipe_key",
           "run_batch", "summary_table", "write_objects"]

_stem = output_stem


def recipe_key(recipe: dict) -> str:
    """SHA-256 of what in a recipe shapes the labels (weights, family, parameters, tiling, normalisation, runtime).

    The runtime counts: ONNX Runtime's maps differ from torch's by float32 rounding, which may move a pixel
    across a threshold, so an image done by the other runtime is redone (``auto`` picks the same runtime on
    the same machine, so resuming is unaffected). Torch adds nothing: older recipes keep their keys.
    """
    keys = ("family", "postprocess", "tiling", "normalisation", "pixel_scale", "in_channels", "streaming")
    core = {k: recipe.get(k) for k in keys}
    core["weights"] = recipe["weights"]["sha256"]
    if recipe.get("output"):  # formats, region, pixel size (issue 21); absent from older recipes' keys
        core["output"] = recipe["output"]
    if recipe.get("test_time"):  # a card's inference limits (issue 26); absent from older recipes' keys
        core["test_time"] = recipe["test_time"]
    if (recipe.get("runtime") or "torch") != "torch":  # ONNX Runtime's maps differ by float32 rounding (issue 26)
        core["runtime"] = recipe["runtime"]
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


@dataclass
class BatchJob:
    """One batch: the model, its parameters and recipe, the inputs and where outputs go.

    Attributes
    ----------
    model : ModelRef
    params : dataclass
        The family's post-processing parameters.
    recipe : dict
        Written to ``out_dir / "recipe.json"``; its :func:`recipe_key` decides what resume skips.
    inputs : list of Path
    out_dir : Path
    settings : StreamSettings
    device : str or None
    resume : bool
        Skip images already done with the same recipe.
    threads : int or None
        torch threads per task (workers share the machine).
    formats : tuple of str or None
        Output formats (``tif``, ``zarr``, ``geojson``, ``csv``; see :mod:`.slide_segment`), in the image's
        level-0 pixels. None: today's default (``<stem>.tif``, or ``<stem>.zarr`` for a streamed image).
    roi : (int, int, int, int) or None
        (y, x, h, w) region in level-0 pixels.
    pixel_size_um : float or None
        µm per level-0 pixel of every input, instead of what the files record.
    skip_background : bool or None
        Never run the tiles without tissue (:mod:`.tissue`); None: for slides only.
    """

    model: ModelRef
    params: Any
    recipe: dict
    inputs: list[Path]
    out_dir: Path
    settings: StreamSettings = field(default_factory=StreamSettings)
    device: str | None = None
    resume: bool = True
    threads: int | None = None
    formats: tuple[str, ...] | None = None
    roi: tuple[int, int, int, int] | None = None
    pixel_size_um: float | None = None
    skip_background: bool | None = None

    @property
    def key(self) -> str:
        """The recipe key stored in every sidecar."""
        return recipe_key(self.recipe)


def _sidecar(job: BatchJob, path: Path) -> Path:
    return job.out_dir / f"{_stem(path)}{SIDECAR}"


def already_done(job: BatchJob, path: Path) -> ImageReport | None:
    """The report of an earlier run of the same recipe on the same input, if its outputs are all there."""
    try:
        info = json.loads(_sidecar(job, path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("recipe_sha256") != job.key or info.get("input") != input_signature(path):
        return None
    if not all((job.out_dir / name).exists() for name in info.get("outputs", [])):
        return None
    return ImageReport(str(path), "skipped", tuple(info.get("shape", ())), int(info.get("objects", 0)),
                       0.0, info.get("outputs", []), int(info.get("tiles", 1)))


def _finish(job: BatchJob, path: Path, report: ImageReport, recipe: str = RECIPE) -> ImageReport:
    info = {"recipe_sha256": job.key, "recipe": recipe, "input": input_signature(path),
            "shape": list(report.shape), "objects": report.objects, "tiles": report.tiles,
            "seconds": round(report.seconds, 3), "outputs": report.outputs}
    write_text(_sidecar(job, path), json.dumps(info, indent=1) + "\n", overwrite=True)
    return report


def write_objects(path: Path, objects: list) -> Path:
    """Per-object masks of a large image: ``labels`` (N,) uint32 ids, ``boxes`` (N, 4) int64 (y0, x0, y1, x1),
    ``scores`` (N,) float32 (NaN where none), and the masks bit-packed: object k's bool (y1-y0, x1-x0) crop is
    ``np.unpackbits(bits[offsets[k]:offsets[k + 1]])[:h * w].reshape(h, w)``."""
    packed = [np.packbits(o.mask.ravel()) for o in objects]
    offsets = np.zeros(len(packed) + 1, np.int64)
    offsets[1:] = np.cumsum([p.size for p in packed])
    arrays = {"labels": np.array([o.id for o in objects], np.uint32),
              "boxes": np.array([o.box for o in objects], np.int64).reshape(-1, 4),
              "scores": np.array([np.nan if o.score is None else o.score for o in objects], np.float32),
              "offsets": offsets, "bits": np.concatenate(packed) if packed else np.zeros(0, np.uint8)}
    return write_atomic(path, lambda fh: np.savez_compressed(fh, **arrays), overwrite=True)


def image_task(job: BatchJob, path: Path) -> ImageReport:
    """Segment one image that fits in a tile, whole, and write its outputs (runs on a worker; the sidecar is
    written by :func:`run_batch`)."""
    start = time.perf_counter()
    try:
        loaded = job.model.get()
        limit_threads(job.threads, loaded.model)
        image = read_image(path)
        session = SegmentSession(image, name=path.name)  # one 2D image, as the family takes it
        instances = run(session.run(loaded, job.params, device=job.device, tile_size=job.settings.network_tile))
        del session  # its cached maps
        stem = _stem(path)
        outputs = [write_label_tiff(job.out_dir / f"{stem}.tif", instances.labels, overwrite=True).name]
        if instances.objects is not None:  # families that keep overlaps: every object whole, packed in planes
            outputs.append(write_mask_stack(job.out_dir / f"{stem}_instances.npz", instances.objects,
                                            scores=instances.scores, overwrite=True).name)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop a batch of hundreds
        return ImageReport(str(path), "failed", error=one_line(exc), seconds=time.perf_counter() - start)
    return ImageReport(str(path), "done", tuple(np.shape(image)), instances.count,
                       time.perf_counter() - start, outputs, notes=_unknown_size_note(loaded.meta))


def _unknown_size_note(meta: dict) -> list[str]:
    """The note for an image segmented as it is although the model records a pixel size (the image does not)."""
    size = model_pixel_size(meta)
    if size is None:
        return []
    note = (f"images without a recorded pixel size are segmented as if they had the model's {size:g} µm/px "
            "(give --pixel-size to resample them)")
    return [note]


def tile_task(job: BatchJob, path: Path, grid, index: int, normaliser) -> Any:
    """Segment tile ``index`` of a large image (runs on a worker); returns its ``TileResult``."""
    loaded = job.model.get()
    limit_threads(job.threads, loaded.model)
    source = open_image(path)
    try:
        return run(segment_tile(loaded.family, loaded.model, loaded.meta, job.params, source, grid, index,
                                normaliser, job.settings, device=job.device))
    finally:
        if hasattr(source, "close"):
            source.close()


def _stream_image(job: BatchJob, path: Path, executor) -> Generator[Progress, None, ImageReport]:
    start = time.perf_counter()
    stem = _stem(path)
    loaded = job.model.get() if isinstance(executor, SerialExecutor) else None
    keep = _keeps_masks(job)
    runner = None
    if not isinstance(executor, SerialExecutor):
        def runner(grid, normaliser, indices):
            items = ((i, (tile_task, job, path, grid, i, normaliser)) for i in indices)
            for _, result in executor.imap_unordered(_call, items):
                yield result

    target = job.out_dir / f"{stem}.zarr"
    with atomic_folder(target, overwrite=True) as partial:  # a killed run leaves no half-filled <stem>.zarr
        result = yield from stream_segment(loaded or _LoadedMeta(job), path, job.params, out=partial,
                                           settings=job.settings, device=job.device, keep_objects=keep,
                                           tile_runner=runner)
    outputs = [target.name]
    if result.objects is not None:
        outputs.append(write_objects(job.out_dir / f"{stem}_objects.npz", result.objects).name)
    return ImageReport(str(path), "done", tuple(result.labels.shape), result.count,
                       time.perf_counter() - start, outputs, result.tiles)


def _at_model_scale(job: BatchJob, path: Path) -> bool:
    """Whether ``path`` goes through :mod:`.slide_segment`: formats, a region, a slide, or a pixel size to fix."""
    ref = job.model
    meta = ref.loaded.meta if ref.loaded is not None else with_card_settings(read_metadata(ref.path), ref.path)
    return needs_model_scale(path, meta, job.formats, job.roi, job.pixel_size_um)


def _scaled_image(job: BatchJob, path: Path) -> Generator[Progress, None, ImageReport]:
    """Segment one image or slide at the model's pixel size and write the formats asked for (here, serially)."""
    start = time.perf_counter()
    done = yield from segment_file(job.model.get(), path, job.params, job.out_dir, _stem(path),
                                   formats=job.formats, roi=job.roi, pixel_size_um=job.pixel_size_um,
                                   settings=job.settings, device=job.device,
                                   skip_background=job.skip_background)
    return ImageReport(str(path), "done", tuple(done.region[2:]), done.count, time.perf_counter() - start,
                       [p.name for p in done.written], done.tiles, notes=done.notes)


def _call(fn, *args):
    return fn(*args)


class _LoadedMeta:
    """What :func:`stream_segment` needs on the client when tiles run on workers: metadata, no network."""

    def __init__(self, job: BatchJob) -> None:
        self.meta = read_metadata(job.model.path)
        self.family = get_family(job.recipe["family"])
        self.model = None


def _keeps_masks(job: BatchJob) -> bool:
    """Whether the family keeps overlapping masks (:attr:`~..family.Family.keeps_overlaps`: layering, maskrcnn)."""
    return get_family(job.recipe["family"]).keeps_overlaps


def check_outputs(job: BatchJob) -> None:
    """Refuse, before any work, a batch that would replace an input or (without ``overwrite``, i.e. with
    ``resume``) a file this package did not write; see :func:`.batch_folder.check_output_folder`."""
    check_output_folder(job.out_dir, job.inputs, _keeps_masks(job), overwrite=not job.resume)


def run_batch(job: BatchJob, executor=None) -> Generator[Progress, None, list[ImageReport]]:
    """Segment every input of ``job``; yields progress (images done / total), returns one report per image.

    ``executor`` is a :class:`~.distributed.SerialExecutor` (default) or :class:`~.distributed.DaskExecutor`.
    The outputs are checked first (:func:`check_outputs`) and the folder is locked for the run. The recipe
    file is written with the first finished image, before its sidecar: a run where every image failed
    leaves none.
    """
    check_outputs(job)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(job.out_dir):
        remove_stale_temporaries(job.out_dir)  # left by a killed run; the lock says none is running
        return (yield from _run_locked(job, executor or SerialExecutor()))


def _run_locked(job: BatchJob, executor) -> Generator[Progress, None, list[ImageReport]]:
    recipe = recipe_name(job.out_dir, job.key, {_stem(p) for p in job.inputs}, recipe_key)
    written = {"recipe": False}

    def finish(path: Path, report: ImageReport) -> ImageReport:
        if report.status != "done":
            return report
        if not written["recipe"]:
            write_text(job.out_dir / recipe, recipe_text(job.recipe), overwrite=True)
            written["recipe"] = True
        return _finish(job, path, report, recipe)

    total = len(job.inputs)
    reports: dict[str, ImageReport] = {}
    notes: dict[str, str] = {}
    small, large = [], []
    for path in job.inputs:
        done = already_done(job, path) if job.resume else None
        if done is not None:
            reports[str(path)] = done
            continue
        try:
            shape, note = _plan(job, path)
        except Exception as exc:  # noqa: BLE001 - an unreadable image fails alone
            reports[str(path)] = ImageReport(str(path), "failed", error=one_line(exc))
            continue
        notes[str(path)] = note or ""
        grid = job.settings.grid(shape)
        (large if len(grid) > 1 or _at_model_scale(job, path) else small).append(path)
    if any(r.status == "skipped" for r in reports.values()) and not (job.out_dir / recipe).exists():
        write_text(job.out_dir / recipe, recipe_text(job.recipe), overwrite=True)
        written["recipe"] = True
    yield Progress(len(reports), total, f"{len(reports)} of {total} images already done" if reports else "start")
    for _, report in executor.imap_unordered(_call, ((p, (image_task, job, p)) for p in small)):
        report.note = notes.get(report.image, "")
        try:
            report = finish(Path(report.image), report)
        except Exception as exc:  # noqa: BLE001 - e.g. the disk filled up: this image failed
            report = ImageReport(report.image, "failed", error=one_line(exc))
        reports[report.image] = report
        yield Progress(len(reports), total, f"{Path(report.image).name}: {report.status}", {"report": report})
    for path in large:
        try:
            gen = _scaled_image(job, path) if _at_model_scale(job, path) else _stream_image(job, path, executor)
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    report = stop.value
                    break
                yield Progress(len(reports), total, f"{path.name}: {p.message}", {"tile": p.done, "tiles": p.total})
            report.note = notes.get(str(path), "")
            report = finish(path, report)
        except Exception as exc:  # noqa: BLE001 - a failed slide fails alone
            report = ImageReport(str(path), "failed", error=one_line(exc))
        reports[str(path)] = report
        yield Progress(len(reports), total, f"{path.name}: {report.status}", {"report": report})
    return [reports[str(p)] for p in job.inputs]


def _plan(job: BatchJob, path: Path) -> tuple[tuple[int, int], str | None]:
    """(H, W) of an image from its header (size limits and decompression bombs checked), and the note on its
    channels for the model (:func:`..io.inputs.channel_note`; raises for channel counts the model cannot take)."""
    shape = check_image_file(path, streamed=True)
    return shape, channel_note(header_shape(path), int(job.recipe.get("in_channels") or 3))
