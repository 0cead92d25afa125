"""Auto-tune widens a refining window whose edge wins, and names parameters left on an end of their range."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from napari_instance_tuner.core.evaluation.autotune import autotune, range_edges
from napari_instance_tuner.core.params import param
from napari_instance_tuner.core.progress import run


@dataclass(frozen=True)
class Knobs:
    level: float = param(0.5, 0.0, 1.0, "a threshold", 0.01)
    size: int = param(100, 0, 1000, "a size")
    flag: bool = param(False, description="a switch")


def search(peak_level: float, peak_size: int, start: Knobs, **kwargs):
    """Tune a score with one peak at (peak_level, peak_size); the 'labels' are the parameters themselves."""
    def postprocess(maps, p):
        return SimpleNamespace(objects=None, labels=p)

    def score(p, _ref):
        return -abs(p.level - peak_level) - abs(p.size - peak_size) / 1000

    return run(autotune(postprocess, [None], [None], start, score, **kwargs))


def test_a_winning_window_edge_is_searched_past():
    # The coarse pass over 0..1000 in 3 values (0, 500, 1000) lands on 500; the refining window around it
    # (167, 500, 833) is won by its edge 167, so a window centred there (0, 167, 250, 500... ) is searched:
    # 250 is nearer the peak at 300, and inside that window, so the search stops there.
    best, _, after = search(0.5, 300, Knobs(size=500), names=["size"], rounds=2, coarse=3)
    assert best.size == 250 and after == -0.05


def test_parameters_on_a_range_end_are_named():
    best, _, _ = search(-0.2, 100, Knobs(), names=["level"])  # the best level lies below the allowed 0
    assert best.level == 0.0
    assert range_edges(best, ["level"]) == [("level", 0.0, "lowest")]
    assert range_edges(Knobs(level=1.0, size=1000, flag=True)) == [("level", 1.0, "highest"),
                                                                   ("size", 1000, "highest")]
    assert range_edges(Knobs()) == [] and range_edges(Knobs(size=0), ["level"]) == []
