"""Long-session memory: N consecutive Run + post-process cycles in one viewer (issue 9: growth < 5 %).

Usage: env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/memory_growth.py
       [--cycles 100] [--size 512] [--model three-branch-glas]

A shown napari viewer with the Segment widget docked segments a synthetic image with a shipped model; each
cycle presses Run (network + post-processing, the Labels layer rewritten) and then moves a slider once
(post-processing only). The resident set size (RSS) is sampled after every cycle, after ``gc.collect()``.
Growth is reported from the end of the warm-up cycles (allocator pools, Qt and vispy caches, torch's
first-call buffers fill there) to the last cycle. Finally the image layer is removed, and the script checks
that the widget released the cached maps of that image (weak reference to the ``Maps`` object).
"""

from __future__ import annotations

import argparse
import gc
import os
import weakref

import numpy as np


def rss_mib() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="three-branch-glas")
    args = parser.parse_args()

    import napari

    from napari_instance_tuner.core.synthetic import synthetic_glands, synthetic_worms
    from napari_instance_tuner.demo import _settle, _wait
    from napari_instance_tuner.widgets.segment import SegmentWidget

    viewer = napari.Viewer(title="memory growth")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    widget.device.value = "cpu"
    widget.models.load(args.model)
    while widget.models.loaded is None or widget.busy:
        _settle(100)
    family = widget.models.loaded.family.name if widget.models.loaded is not None else "?"
    if family == "layering":
        image, *_ = synthetic_worms((args.size, args.size), seed=0)
        layer = viewer.add_image(image, name="img")
    else:
        image, *_ = synthetic_glands((args.size, args.size), seed=0)
        layer = viewer.add_image(image, name="img", rgb=True)
    widget.image.value = layer
    samples = []
    for cycle in range(args.cycles):
        status = _wait(widget.run_finished, widget.run)
        assert status == "ok", f"cycle {cycle}: run ended with {status!r}"
        slider = widget.params.controls[0]  # the first threshold: nudge it, post-processing only
        step = 0.01 if cycle % 2 == 0 else -0.01
        _wait(widget.labels_updated, lambda slider=slider, step=step: setattr(slider, "value",
                                                                              round(slider.value + step, 2)))
        _settle(20)
        gc.collect()
        samples.append(rss_mib())
    maps_ref = weakref.ref(widget.sessions.get(layer).maps)
    viewer.layers.remove(layer)
    _settle(200)
    gc.collect()
    released = maps_ref() is None
    base, last = samples[args.warmup - 1], samples[-1]
    slope = np.polyfit(np.arange(args.warmup, len(samples)), samples[args.warmup:], 1)[0]
    print(f"model {args.model} ({family}), {args.size}x{args.size} image, {args.cycles} cycles (Run + slider)")
    print(f"RSS after cycle 1: {samples[0]:.0f} MiB; after warm-up ({args.warmup}): {base:.0f} MiB; "
          f"after {args.cycles}: {last:.0f} MiB")
    print(f"growth after warm-up: {100 * (last - base) / base:+.2f} % ({last - base:+.1f} MiB; "
          f"trend {slope * 1024:+.1f} KiB/cycle)")
    print(f"cached maps of the removed image released: {released}")
    viewer.close()


if __name__ == "__main__":
    main()
