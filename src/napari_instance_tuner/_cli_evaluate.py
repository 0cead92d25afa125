"""``napari-instance-tuner evaluate``: the metrics table of a model on an annotated split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._cli_data import channel_notes, check_data_folder, images_only
from ._cli_support import check_out_file, run_with_bar
from .core.registry import example_model


def format_table(summary: dict[str, dict]) -> str:
    """Metric summary (group -> metric -> value) as an aligned text table: one row per metric, one column
    per group; the rows are :data:`~.core.evaluation.layer_metrics.TABLE_ROWS` (plus image count and pixel Dice)."""
    from .core.evaluation.layer_metrics import TABLE_ROWS  # deferred: command stack

    rows = [("n_images", "images"), *TABLE_ROWS[:5], ("pixel_dice", "pixel Dice"), *TABLE_ROWS[5:]]
    groups = list(summary)
    lines = [f"{'metric':<24}" + "".join(f"{g:>12}" for g in groups)]
    for key, title in rows:
        if not any(key in summary[g] for g in groups):
            continue
        cells = []
        for g in groups:
            v = summary[g].get(key, float("nan"))
            cells.append(f"{v:12d}" if isinstance(v, (int, np.integer)) else f"{v:12.4f}")
        lines.append(f"{title:<24}" + "".join(cells))
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .core.inference.runtime import choose_runtime, load_for_runtime, model_family  # deferred: command stack
    from .core.io.safe_write import write_text  # deferred: command stack
    from .core.training.data import load_split, read_groups  # deferred: command stack
    from .core.training.jobs import evaluate_samples, load_params, summarise  # deferred: command stack

    runtime = choose_runtime(args.runtime, model_family(args.model), args.device)
    loaded = load_for_runtime(args.model, runtime)
    device = "cpu" if runtime == "onnx" else args.device
    params = load_params(loaded, args.params)
    if args.json:
        check_out_file(args.json, args.overwrite, "--json", inputs=(args.params, loaded.path))
    check_data_folder(args.data)
    if args.foreground_only:
        # Table V ablation: the foreground branch alone (threshold, denoise, components, S_min).
        from dataclasses import replace  # deferred: command stack

        params = replace(params, subtract_boundaries=False, require_centroid=False, grow_back=0)
    samples = load_split(args.data)
    channel_notes(loaded, samples, args.quiet)
    rows = run_with_bar(images_only(evaluate_samples(loaded, samples, params, device=device), "evaluated"),
                        args.quiet, "image", "evaluate")
    summary = summarise(rows, read_groups(args.data))
    print(f"model {loaded.name} on {args.data} ({len(rows)} images)")
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps({"summary": summary, "per_image": rows}, indent=1) + "\n",
                   overwrite=args.overwrite)
    return 0


def add_evaluate(command, model_and_data) -> None:
    """The ``evaluate`` sub-command; ``model_and_data(parser, params_help)`` adds the shared options."""
    e = command("evaluate", "print the metrics table of a model on an annotated split",
                f"  napari-instance-tuner evaluate --model {example_model()} --data glas/test\n"
                "  napari-instance-tuner evaluate --model my.safetensors --data data/val --params best.json "
                "--json metrics.json")
    model_and_data(e, "post-processing parameters (JSON or a recipe) instead of the model's")
    e.add_argument("--runtime", choices=("auto", "torch", "onnx"), default=None,
                   help="what runs the network (as for predict): onnx, torch, or auto (default)")
    e.add_argument("--foreground-only", action="store_true", help="ablation: use the foreground branch alone")
    e.add_argument("--json", help="also write the summary and per-image metrics here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=cmd_evaluate)
