"""What a batch reports: one :class:`ImageReport` per image, and the summary table the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstanceTunerError


@dataclass
class ImageReport:
    """One row of the summary: what happened to one image."""

    image: str
    status: str  # "done", "skipped" or "failed"
    shape: tuple[int, ...] = ()
    objects: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    tiles: int = 1
    error: str = ""
    note: str = ""  # about this image (e.g. its channels converted for the model)
    notes: list[str] = field(default_factory=list)  # about the run, printed once per batch (e.g. pixel size)


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a report: a message written for the user as it is, others with their type."""
    text = str(exc).strip().splitlines()
    if isinstance(exc, InstanceTunerError) and text:  # a message written for the user: as it is
        return text[0]
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def summary_table(reports: list[ImageReport]) -> str:
    """The batch summary as an aligned text table, with a totals line."""
    rows = [("image", "status", "size", "objects", "tiles", "seconds", "output / error")]
    for r in reports:
        size = "x".join(str(n) for n in r.shape[:2]) if r.shape else "-"
        rows.append((Path(r.image).name, r.status, size, str(r.objects), str(r.tiles), f"{r.seconds:.1f}",
                     r.error or ", ".join(r.outputs)))
    counts = {s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed")}
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    lines.append(f"{len(reports)} images: {counts['done']} done, {counts['skipped']} skipped (same recipe), "
                 f"{counts['failed']} failed; {sum(r.objects for r in reports)} objects; "
                 f"{sum(r.seconds for r in reports):.1f} s of work")
    return "\n".join(lines)
