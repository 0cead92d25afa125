"""Fine-tune step time in the Fine-tune widget (a napari thread worker) against the same steps headless.

Usage: env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/finetune_step_speed.py
       --image ../shared/data/glas/testA/images/testA_1.png [--model three-branch-glas-v3] [--steps 6]
       [--amp] [--threads N] [--modes headless,widget]

One GlaS image and its ground truth (``labels/<name>_anno.*`` or ``labels/<name>.*`` beside ``images/``)
stand in for a corrected pair. ``headless`` runs :func:`~napari_instance_tuner.core.training.finetune.finetune`
on the main thread, as the CLI does; ``widget`` presses Fine-tune in a shown napari viewer and waits for
``finetune_finished``. Step times come from the training history (``time`` per step, measured inside the
loop), the first step (warm-up) excluded. ``--threads`` sets torch's thread count first (default: torch's).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def read_pair(image_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The image and its ground-truth labels (same stem, in ``../labels``)."""
    import imageio.v3 as iio

    path = Path(image_path)
    labels = sorted((path.parent.parent / "labels").glob(f"{path.stem}*"))
    if not labels:
        raise SystemExit(f"no labels for {path.name} in {path.parent.parent / 'labels'}")
    return np.asarray(iio.imread(path))[..., :3], np.asarray(iio.imread(labels[0])).astype(np.int32)


def step_times(history: list[dict]) -> list[float]:
    """Seconds per step from the history's cumulative ``time``, the first (warm-up) step dropped."""
    times = [0.0] + [float(h["time"]) for h in history]
    return list(np.diff(times))[1:]


def headless(loaded, image, labels, settings) -> list[float]:
    from napari_instance_tuner.core.progress import run
    from napari_instance_tuner.core.training.finetune import CorrectedImage, finetune

    _, result = run(finetune(loaded, [CorrectedImage(image, labels)], settings))
    return step_times(result.history)


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process's threads, summed per thread name (digits dropped)."""
    ticks, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")].rstrip("0123456789-")
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def widget_run(model: str, image, labels, settings) -> tuple[list[float], dict]:
    import napari

    from napari_instance_tuner.demo import _settle, _wait
    from napari_instance_tuner.widgets.finetune import FinetuneWidget

    viewer = napari.Viewer(title="fine-tune step speed")
    viewer.window.resize(1400, 860)
    viewer.add_image(image, name="img", rgb=True)
    corrected = viewer.add_labels(labels, name="img corrected")
    try:  # nobody to answer "save the fine-tuned weights?" when the viewer closes
        widget = FinetuneWidget(viewer, ask_keep=lambda name: False)
    except TypeError:  # the widget before session 12 asked nothing
        widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune", area="right")
    widget.pairs.image.value, widget.pairs.labels.value = viewer.layers["img"], corrected
    widget.pairs.add()
    widget.fallback.combo.value = model
    widget.steps.value, widget.batch_size.value = settings.steps, settings.batch_size
    widget.amp.value = settings.amp
    if hasattr(widget, "budget"):
        widget.budget.value = 0  # steps, not a time budget
    widget.resegment.value = False
    _settle(300)
    before = thread_cpu()
    status = _wait(widget.finetune_finished, widget.start)
    assert status == "ok", status
    history = widget.tuned.result.history
    after = thread_cpu()
    info = {name: after[name] - before.get(name, 0.0) for name in after}
    viewer.close()
    return step_times(history), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--modes", default="headless,widget")
    args = parser.parse_args()

    import torch

    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.training.finetune import FinetuneSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    image, labels = read_pair(args.image)
    settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, amp=args.amp)
    print(f"model {args.model}, image {Path(args.image).name} {image.shape}, batch {args.batch_size}, crop "
          f"{settings.crop}, amp {args.amp}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<10}{'median s/step':>15}{'min':>8}{'max':>8}{'N':>4}")
    for mode in args.modes.split(","):
        start = time.perf_counter()
        if mode == "headless":
            times = headless(load_model(args.model), image, labels, settings)
        else:
            times, cpu = widget_run(args.model, image, labels, settings)
        print(f"{mode:<10}{np.median(times):>15.2f}{min(times):>8.2f}{max(times):>8.2f}{len(times):>4}"
              f"   ({time.perf_counter() - start:.0f} s in all)", flush=True)
        if mode == "widget":  # where the CPU went during the run: the worker, the GUI thread, software OpenGL
            top = sorted(cpu.items(), key=lambda kv: -kv[1])[:4]
            print("          CPU s by thread: " + ", ".join(f"{name} {sec:.1f}" for name, sec in top))


if __name__ == "__main__":
    main()
