"""Annotated image folders: ``<split>/images/<id>.png|.tif`` and ``<split>/labels/<id>.tif``.

Overlapping ground truth, where present, is ``labels/<id>_instances.npz`` with ``masks`` bool (N, H, W), or the
packed ``planes`` uint32 (P, H, W) that ``predict`` writes (:mod:`..io.mask_stack`); training data are small, so
it is read as a dense stack.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputImageError, InstanceTunerError
from ..io.inputs import check_image_file, checked_labels
from ..sparse_masks import SparseMasks

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class Sample:
    """One annotated image.

    Attributes
    ----------
    name : str
        The file stem (``<id>``).
    image : np.ndarray
        As stored: (H, W) or (H, W, C), any dtype.
    labels : np.ndarray
        int32 (H, W) instance labels, 0 = background.
    masks : np.ndarray or None
        bool (N, H, W) exact per-object masks where objects overlap.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        """The exact ground truth for metrics: the overlapping mask stack where present, else the labels."""
        return self.masks if self.masks is not None else self.labels


def read_image(path: str | Path, *, streamed: bool = False) -> np.ndarray:
    """Read a PNG/TIFF/JPEG/BMP as stored (TIFF through tifffile, others through imageio).

    The header is checked first (:func:`..io.inputs.check_image_file`: size limits, decompression bombs);
    ``streamed`` says the image will be processed tile by tile, so the one-piece limit does not apply.

    Raises
    ------
    InputImageError
        If the file is unreadable, not an image of its kind, empty or beyond the size limits.
    """
    path = Path(path)
    check_image_file(path, streamed=streamed)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        return iio.imread(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputImageError(f"{path.name!r} cannot be decoded: {str(exc).strip().splitlines()[0]}") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_split(split_dir: str | Path, names: list[str] | None = None) -> list[Sample]:
    """Load every (image, labels) pair of a split folder.

    Raises
    ------
    InstanceTunerError
        If the folder lacks ``images/`` or ``labels/``, or an image has no label file.
    """
    split_dir = Path(split_dir)
    images_dir, labels_dir = split_dir / "images", split_dir / "labels"
    if not split_dir.is_dir():
        raise InstanceTunerError(f"the data folder {str(split_dir)!r} does not exist" if not split_dir.exists()
                                 else f"{str(split_dir)!r} is a file; give a folder with images/ and labels/")
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InstanceTunerError(f"{split_dir} must contain 'images/' and 'labels/' folders")
    samples = []
    for path in list_images(images_dir):
        if names is not None and path.stem not in names:
            continue
        label_path = labels_dir / f"{path.stem}.tif"
        if not label_path.is_file():
            raise InstanceTunerError(f"no label file {label_path} for image {path.name}")
        image = read_image(path)
        labels = checked_labels(read_image(label_path), label_path.name, np.shape(image))
        npz = labels_dir / f"{path.stem}_instances.npz"
        masks = _read_masks(npz, labels.shape) if npz.is_file() else None
        samples.append(Sample(path.stem, image, labels, masks))
    if not samples:
        raise InstanceTunerError(f"no images found in {images_dir}")
    return samples


def _read_masks(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The bool (N, H, W) mask stack of an ``_instances.npz`` file, checked against the labels' shape."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            if "planes" in data.files:  # the packed planes that predict writes (core/io/mask_stack.py)
                masks = SparseMasks.from_labels(data["planes"]).to_dense()
            else:
                masks = data["masks"]
    except KeyError:
        raise InputImageError(f"{path.name!r} has no 'masks' array (expected bool masks of shape (N, H, W), or "
                              "the 'planes' of a mask stack written by predict)") from None
    except Exception as exc:  # noqa: BLE001 - zip, pickle and format errors alike: the file is unusable
        raise InputImageError(f"{path.name!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if masks.ndim != 3 or masks.shape[1:] != tuple(shape):
        raise InputImageError(f"{path.name!r} holds masks of shape {masks.shape}; expected (N, {shape[0]}, {shape[1]})")
    return masks.astype(bool)


def read_groups(split_dir: str | Path) -> dict[str, tuple[str, str]]:
    """GlaS ``Grade.csv`` beside the split: image id -> (patient id, grade); {} when absent."""
    grade_csv = Path(split_dir).parent / "Grade.csv"
    if not grade_csv.is_file():
        return {}
    with open(grade_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    return {r[0].strip(): (r[1].strip(), r[2].strip()) for r in rows[1:] if len(r) >= 3}


def validation_split(
    names: list[str], fraction: float, seed: int, groups: dict[str, tuple[str, str]] | None = None
) -> tuple[list[str], list[str]]:
    """Split image names into (train, validation), keeping each group (patient) on one side.

    With GlaS groups, whole patients go to validation until ``fraction`` of the images is reached and
    both grades are represented, so validation measures generalisation to unseen patients. A ``fraction``
    of 0 holds nothing out: every image trains, and training keeps its last weights without auto-tuning.
    """
    if fraction <= 0:
        return list(names), []
    rng = np.random.default_rng(seed)
    groups = groups or {}
    by_group: dict[str, list[str]] = {}
    for n in names:
        by_group.setdefault(groups.get(n, (n, ""))[0], []).append(n)
    order = list(by_group)
    rng.shuffle(order)
    target = max(1, round(fraction * len(names)))
    grade = lambda n: groups.get(n, ("", ""))[1]
    all_grades = {grade(n) for n in names} - {""}
    val: list[str] = []
    for key in order:  # fill up to the target size with whole groups
        if len(val) >= target:
            break
        if len(val) + len(by_group[key]) <= 2 * target:  # skip groups that would swallow the split
            val.extend(by_group[key])
    for key in order:  # then make sure every grade is represented
        missing = all_grades - {grade(v) for v in val}
        if not missing:
            break
        if by_group[key][0] not in val and missing & {grade(n) for n in by_group[key]}:
            val.extend(by_group[key])
    val_set = set(val)
    return [n for n in names if n not in val_set], sorted(val)


def patient_folds(names: list[str], groups: dict[str, tuple[str, str]], folds: int | None) -> list[list[str]]:
    """The patients of the images ``names`` in folds, for a k-fold validation by patient.

    Parameters
    ----------
    names : list of str
        Image ids, each in ``groups`` (GlaS ``Grade.csv``: id -> (patient id, grade); patient ids are integers).
    groups : dict
        As :func:`read_groups` returns it.
    folds : int or None
        None (or at least the number of patients): one fold per patient. Otherwise that many folds, balanced by
        image count: patients taken largest first, each into the fold with the fewest images (then patients).
        Deterministic.

    Returns
    -------
    list of list of str
        The patient ids of each fold, sorted numerically within a fold.
    """
    count: dict[str, int] = {}
    for n in names:
        count[groups[n][0]] = count.get(groups[n][0], 0) + 1
    patients = sorted(count, key=int)
    if not folds or folds >= len(patients):
        return [[p] for p in patients]
    out: list[list[str]] = [[] for _ in range(folds)]
    for p in sorted(patients, key=lambda q: (-count[q], int(q))):  # largest first, to the lightest fold
        min(out, key=lambda f: (sum(count[q] for q in f), len(f))).append(p)
    return [sorted(f, key=int) for f in out]


def extra_training_samples(folders: list[str | Path], held_patients: set[str]) -> list[Sample]:
    """Every annotated image of ``folders`` except those of ``held_patients`` (GlaS ``Grade.csv`` ids).

    Used to train on further splits (e.g. GlaS testA beside train) while the validation patients stay
    unseen: an image whose patient is held out for validation is left out, wherever it comes from.

    Parameters
    ----------
    folders : list of str or Path
        Split folders (``images/`` and ``labels/``), each optionally with a ``Grade.csv`` beside it.
    held_patients : set of str
        Patient ids of the validation images.

    Returns
    -------
    list[Sample]
    """
    samples = []
    for folder in folders:
        groups = read_groups(folder)
        samples += [s for s in load_split(folder) if groups.get(s.name, ("", ""))[0] not in held_patients]
    return samples
