"""Command line: ``napari-instance-tuner train|predict|evaluate|finetune|autotune|export-model|models|demo``.

Every command is a thin shell over :mod:`napari_instance_tuner.core.jobs`; errors the user can fix are
printed as one line (exit code 2), not as a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ._cli_package import add_export_model
from .core.errors import InstanceTunerError


def _progress_printer(quiet: bool):
    last = {"msg": None}

    def show(p) -> None:
        if quiet:
            return
        if "epoch" in p.info:  # an epoch record: one line each
            rec = p.info
            extra = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith("val_"))
            print(f"epoch {rec['epoch']:4d} loss={rec['loss']:.4f} {extra} t={rec['time']:.0f}s", flush=True)
        elif p.message != last["msg"] and "tile" not in p.message and "epoch" not in p.message:
            print(p.message, flush=True)
        last["msg"] = p.message

    return show


def cmd_models(args) -> int:
    from .core.checkpoint import model_card, shipped_models

    for name, path in shipped_models().items():
        card = model_card(name)
        print(f"{name}\t{card.get('family', '?')}\t{card.get('summary', '')}\t{path}")
    return 0


def cmd_train(args) -> int:
    from .core.jobs import TrainOptions, train_job
    from .core.progress import run
    from .core.training import TrainConfig

    try:  # TrainConfig checks its values (ValueError): an error message, not a traceback
        train = TrainConfig(
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr, patience=args.patience,
            validate_every=args.validate_every, seed=args.seed, max_minutes=args.max_minutes,
            loader_workers=args.loader_workers, optimizer=args.optimizer, weight_decay=args.weight_decay,
            ema_decay=args.ema, amp=args.amp,
        )
    except ValueError as exc:
        raise InstanceTunerError(f"train: {exc}") from exc
    arch = {"base_channels": args.base_channels, "depth": args.depth, "conv_type": args.conv_type, "norm": args.norm}
    family_options = {}
    if args.family == "maskrcnn":
        arch = {"backbone": args.backbone, "base_channels": args.base_channels, "clahe": args.clahe}
        if args.anchor_sizes:
            arch["anchor_sizes"] = [int(v) for v in args.anchor_sizes.split(",")]
        if args.aux_masks:
            arch["aux_mask_sizes"] = [int(v) for v in args.aux_masks.split(",")]
        if args.boundary_refinement:
            arch["boundary_refinement"] = True
        family_options = {"biased_training": args.biased_training, "init_weights": args.init_weights,
                          "coco_pretrained": args.coco_pretrained}
    elif args.family == "layering":
        arch.update(n_layers=args.layers, head_channels=args.head_channels)
        family_options = {k: v for k, v in (("phase1_epochs", args.phase1_epochs),
                                             ("phase2_epochs", args.phase2_epochs),
                                             ("paste_probability", args.paste_crossings),
                                             ("init_weights", args.init_weights)) if v is not None}
        family_options["separate_targets"] = args.overlap_targets == "separated"
        family_options["fixed_targets"] = args.target_layers == "fixed"
        if not (math.isfinite(args.layer_bce) and args.layer_bce >= 0):
            raise InstanceTunerError(f"--layer-bce must be a finite number >= 0, got {args.layer_bce}")
        family_options["layer_bce_weight"] = args.layer_bce
    if args.branches:
        arch["branches"] = args.branches.split(",")
    if args.arch_json:  # any other architecture key of the family's config, e.g. '{"mask_head_channels": 64}'
        try:
            arch.update(json.loads(args.arch_json))
        except (ValueError, TypeError) as exc:
            raise InstanceTunerError(f"--arch-json is not a JSON object: {exc}") from exc
    targets = {"boundary_width": args.boundary_width, "centroid_width": args.centroid_width,
               "centroid_mode": args.centroid_mode}
    options = TrainOptions(
        data=args.data, out=args.out, family=args.family, architecture=arch, pixel_scale=args.pixel_scale,
        crop=args.crop, batch_size=args.batch_size, val_fraction=args.val_fraction, train=train, targets=targets,
        family_options=family_options,
        augment=not args.no_augment, autotune=not args.no_autotune, device=args.device, workdir=args.workdir,
        name=args.name, half=not args.float32,
    )
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = run(train_job(options), _progress_printer(args.quiet))
    print(f"saved {out}")
    return 0


def cmd_predict(args) -> int:
    """Batch segmentation (see :mod:`.core.batch`): files, folders or globs -> labels next to ``recipe.json``."""
    from .core.batch import BatchJob, expand_inputs, run_batch, summary_table
    from .core.checkpoint import load_model
    from .core.distributed import ModelRef, executor
    from .core.inference import choose_device
    from .core.jobs import load_params
    from .core.recipe import make_recipe, recipe_model, recipe_params
    from .core.streaming import StreamSettings

    device = args.device
    network_tile = args.network_tile
    streamed: dict = {}
    if args.recipe:  # the recipe's weights (SHA-256 checked; --model names them if moved) and parameters
        from .core.recipe import load_recipe

        if args.params:
            raise InstanceTunerError("--params cannot be combined with --recipe (the recipe fixes the parameters)")
        recipe = load_recipe(args.recipe)
        loaded = recipe_model(recipe, args.model)
        params = recipe_params(recipe, loaded)
        network_tile = network_tile or (recipe.get("tiling") or {}).get("tile_size")
        streamed = recipe.get("streaming") or {}  # the tiles and halo the recipe's labels were streamed with
        if device is None:  # the recorded device where this machine has it
            try:
                device = choose_device(recipe.get("device") or "cpu")
            except InstanceTunerError:
                device = "cpu"
    elif args.model:
        loaded = load_model(args.model)
        params = load_params(loaded, args.params)
        recipe = make_recipe(loaded, params, "<batch>", (), device=device or "auto", tile_size=network_tile)
    else:
        raise InstanceTunerError("predict needs --model or --recipe")
    inputs = expand_inputs(args.inputs)
    tile = args.tile if args.tile is not None else int(streamed.get("tile", 2048))
    halo = args.halo if args.halo is not None else int(streamed.get("halo", 256))
    settings = StreamSettings(tile=tile if tile > 0 else 1 << 30, halo=halo, network_tile=network_tile,
                              amp=args.amp or bool(streamed.get("amp", False)))
    recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}
    recipe["image"] = {"name": "<batch>", "shape": []}
    recipe["streaming"] = settings.to_dict()
    workers = args.workers
    if args.scheduler is None and workers is None:  # auto: one image or a GPU runs here
        on_gpu = choose_device(device) != "cpu"
        workers = 0 if len(inputs) == 1 or on_gpu else min(len(inputs), _cores() // args.threads_per_worker) or 0
        workers = 0 if workers == 1 else workers
    job = BatchJob(ModelRef(str(loaded.path), loaded.sha256, loaded), params, recipe, inputs, Path(args.out),
                   settings, device, resume=not args.overwrite,
                   threads=args.threads_per_worker if (workers or args.scheduler) else None)
    with executor(args.scheduler, workers, args.threads_per_worker) as ex:
        where = "here" if workers == 0 and args.scheduler is None else f"on {ex.workers} dask workers ({ex.address})"
        if not args.quiet:
            print(f"{len(inputs)} images, model {loaded.name}, {where}", file=sys.stderr, flush=True)
        reports = _run_with_bar(run_batch(job, ex), len(inputs), args.quiet)
    for r in reports:
        if r.status == "done" and not args.quiet:
            print(f"{r.image} -> {Path(args.out) / r.outputs[0]} ({r.objects} objects"
                  + (f", masks in {r.outputs[1]}" if len(r.outputs) > 1 else "") + ")")
    print(summary_table(reports))
    failed = [r for r in reports if r.status == "failed"]
    for r in failed:
        print(f"error: {r.image}: {r.error}", file=sys.stderr)
    return 2 if failed else 0


def _cores() -> int:
    from .core.distributed import default_workers

    return default_workers(1)


def _run_with_bar(work, total: int, quiet: bool):
    """Drive a batch generator with a tqdm progress bar on stderr (images; tiles of a large image as postfix)."""
    from tqdm import tqdm

    with tqdm(total=total, unit="image", disable=quiet, file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            try:
                p = next(work)
            except StopIteration as stop:
                return stop.value
            bar.n = p.done
            if p.info.get("tiles"):
                bar.set_postfix_str(f"{p.message.split(':')[0]} tile {p.info['tile']}/{p.info['tiles']}")
            elif "oom" in p.message or "out of memory" in p.message:
                bar.write(p.message)
            bar.refresh()


def _pairs_from_split(data: str):
    from .core.data import load_split
    from .core.finetune import CorrectedImage

    return [CorrectedImage(s.image, s.labels) for s in load_split(data)]


def cmd_finetune(args) -> int:
    from .core.checkpoint import load_model
    from .core.finetune import FinetuneSettings, finetune, save_finetuned
    from .core.progress import run

    loaded = load_model(args.model)
    pairs = _pairs_from_split(args.data)
    if args.holdout_fraction is not None:  # the right-most fraction of each image's width is validated on
        if not 0 < args.holdout_fraction < 1:
            raise InstanceTunerError(f"--holdout-fraction must lie between 0 and 1, got {args.holdout_fraction}")
        for p in pairs:
            p.holdout = np.zeros(np.shape(p.labels), bool)
            p.holdout[:, p.holdout.shape[1] - max(1, round(args.holdout_fraction * p.holdout.shape[1])):] = True
    settings = FinetuneSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
                                augment=not args.no_augment, freeze_encoder=not args.train_encoder, seed=args.seed,
                                validate_every=args.validate_every, amp=args.amp)
    model, result = run(finetune(loaded, pairs, settings, device=args.device or "cpu"))
    out = save_finetuned(args.out, loaded, model, result, pairs, settings)
    held = "" if result.validation is None or result.validation["best_score"] is None else (
        f"; held-out score {result.validation['start_score']:.3f} -> best {result.validation['best_score']:.3f} "
        f"at step {result.validation['best_step']}, whose weights are saved"
    )
    print(f"fine-tuned {loaded.name} on {len(pairs)} images for {len(result.history)} steps "
          f"(loss {result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f}{held}); saved {out}")
    return 0


def cmd_autotune(args) -> int:
    from .core.autotune import autotune
    from .core.checkpoint import load_model
    from .core.data import load_split
    from .core.evaluation import score_function
    from .core.jobs import load_params
    from .core.params import params_to_dict
    from .core.progress import run
    from .core.safe_write import write_text

    loaded = load_model(args.model)
    params = load_params(loaded, args.params)
    samples = load_split(args.data)
    maps = [run(loaded.family.predict_maps(loaded.model, s.image, loaded.meta, device=args.device)) for s in samples]
    score = score_function(args.metric)
    refs = [s.reference for s in samples]
    best, before, after = run(autotune(loaded.family.postprocess, maps, refs, params, score))
    write_text(args.out, json.dumps({"postprocess": params_to_dict(best)}, indent=1) + "\n", overwrite=args.overwrite)
    print(f"{args.metric}: {before:.4f} -> {after:.4f} on {len(samples)} images; parameters written to {args.out}")
    return 0


def format_table(summary: dict[str, dict]) -> str:
    """Metric summary (group -> metric -> value) as an aligned text table: one row per metric, one column
    per group; the rows are :data:`~.core.evaluation.TABLE_ROWS` (plus image count and pixel Dice)."""
    from .core.evaluation import TABLE_ROWS

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
    from .core.checkpoint import load_model
    from .core.data import load_split, read_groups
    from .core.jobs import evaluate_samples, load_params, summarise
    from .core.progress import run

    loaded = load_model(args.model)
    params = load_params(loaded, args.params)
    if args.foreground_only:
        # Table V ablation: the foreground branch alone (threshold, denoise, components, S_min).
        from dataclasses import replace

        params = replace(params, subtract_boundaries=False, require_centroid=False, grow_back=0)
    samples = load_split(args.data)
    rows = run(evaluate_samples(loaded, samples, params, device=args.device))
    summary = summarise(rows, read_groups(args.data))
    print(f"model {loaded.name} on {args.data} ({len(rows)} images)")
    print(format_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "per_image": rows}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .core.evaluation import TUNABLE  # numpy/scipy only: the CLI still starts without torch

    parser = argparse.ArgumentParser(prog="napari-instance-tuner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="open napari with the plugin on a segmented sample (see demo --help)")

    sub.add_parser("models", help="list the shipped weights").set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a model on an annotated folder (images/, labels/)")
    t.add_argument("--family", default="three-branch", help="three-branch, layering or maskrcnn")
    t.add_argument("--data", required=True, help="split folder with images/ and labels/")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    t.add_argument("--name", help="model name stored in the checkpoint (default: file stem)")
    t.add_argument("--pixel-scale", type=float, default=0.5, help="resize factor before the network")
    t.add_argument("--base-channels", type=int, default=16)
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--conv-type", default="separable", choices=["standard", "separable", "space_depth_separable"])
    t.add_argument("--norm", default="batch", choices=["batch", "group"])
    t.add_argument("--branches", help="comma-separated subset of foreground,boundary,centroid (ablations)")
    t.add_argument("--boundary-width", type=float, default=11.0, help="px at the paper's 256-px scale")
    t.add_argument("--centroid-width", type=float, default=14.0, help="px at the paper's 256-px scale")
    t.add_argument("--centroid-mode", default="bbox", choices=["bbox", "inside"])
    t.add_argument("--backbone", default="tiny_fpn", choices=["tiny_fpn", "resnet18_fpn", "resnet50_fpn"],
                   help="maskrcnn: backbone (tiny_fpn trains from scratch on a CPU)")
    t.add_argument("--anchor-sizes", help="maskrcnn: 5 comma-separated anchor sizes in network pixels")
    t.add_argument("--clahe", action="store_true", help="maskrcnn: CLAHE pre-processing (the nuclei paper)")
    t.add_argument("--biased-training", action="store_true",
                   help="maskrcnn: MaskPlus biased training (mask-loss weight 1.5 early, then 1)")
    t.add_argument("--aux-masks", help="maskrcnn: MaskPlus quasi-multitask auxiliary mask sizes, e.g. 14,56")
    t.add_argument("--boundary-refinement", action="store_true",
                   help="maskrcnn: MaskPlus improved boundary refinement of the mask logits")
    t.add_argument("--init-weights", help="maskrcnn: start from a torchvision Mask R-CNN state_dict (.pth); "
                   "layering: from one of our checkpoints of the same architecture")
    t.add_argument("--paste-crossings", type=float,
                   help="layering: probability of pasting an object across another in a training crop")
    t.add_argument("--overlap-targets", choices=("argmax", "separated"), default="argmax",
                   help="layering, phase 2: each object's target layer is its arg-max layer as in the paper "
                   "(argmax), or adjacent objects get different layers (separated)")
    t.add_argument("--target-layers", choices=("per-batch", "fixed"), default="per-batch",
                   help="layering, phase 2: derive each object's target layer from the current model on every "
                   "batch (per-batch), or once per whole training image from the model that starts phase 2, "
                   "kept for all of phase 2 as in the paper (fixed)")
    t.add_argument("--layer-bce", type=float, default=0.0, metavar="WEIGHT",
                   help="layering, phase 2: add WEIGHT x cross-entropy between the layering logits and the target "
                   "stack S (default 0: the paper's loss only)")
    t.add_argument("--coco-pretrained", action="store_true",
                   help="maskrcnn (resnet50_fpn): start from torchvision's COCO weights (downloads; needs internet)")
    t.add_argument("--arch-json", help="JSON object of further architecture keys (see the family's config class)")
    t.add_argument("--layers", type=int, default=8, help="layering: N output layers")
    t.add_argument("--head-channels", type=int, default=64, help="layering: features of the two head convolutions")
    t.add_argument("--phase1-epochs", type=int, help="layering: epochs of layering training (default 2/3 of --epochs)")
    t.add_argument("--phase2-epochs", type=int, help="layering: epochs of overlap completion (default the rest)")
    t.add_argument("--epochs", type=int, default=150)
    t.add_argument("--steps-per-epoch", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                   help="sgd: momentum 0.9 (torchvision's detection recipe; give it a larger --lr, e.g. 0.02)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, select and ship an exponential moving average of the weights (e.g. 0.99; 0: off)")
    t.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 forward passes (2-3x faster on CPUs with AVX512-BF16 or AMX; "
                   "refused where the device lacks bfloat16; not for maskrcnn)")
    t.add_argument("--patience", type=int, default=20)
    t.add_argument("--validate-every", type=int, default=2)
    t.add_argument("--val-fraction", type=float, default=0.18)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--threads", type=int)
    t.add_argument("--loader-workers", type=int, default=0,
                   help="processes that make training batches ahead of a GPU (0: in the training process)")
    t.add_argument("--workdir", default="checkpoints", help="folder for resume files (git-ignored)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-autotune", action="store_true")
    t.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images, folders or glob patterns (resumable; dask for scale-out)")
    p.add_argument("--model", help="shipped model name or checkpoint path (with --recipe: the moved weights)")
    p.add_argument("--params", help="JSON of post-processing parameters (or a recipe)")
    p.add_argument("--recipe", help="recipe JSON written by an export: reproduce its labels exactly")
    p.add_argument("--out", required=True, help="output folder (labels, sidecars and recipe.json)")
    p.add_argument("--device", default=None)
    p.add_argument("--tile", type=int,
                   help="images larger than this (px) are streamed tile by tile into <stem>.zarr; 0 = never "
                   "(default: the recipe's, else 2048)")
    p.add_argument("--halo", type=int,
                   help="context around each tile (px); objects smaller than this are stitched exactly "
                   "(default: the recipe's, else 256)")
    p.add_argument("--network-tile", type=int, help="tile size inside the network (default: the model's)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast on CUDA, bfloat16 on a CPU with AVX512-BF16 or AMX "
                   "(1.6-2.7x faster here); float32 elsewhere")
    p.add_argument("--workers", type=int,
                   help="worker processes of an embedded dask cluster (0 = run here; default: one per core "
                        "when there are several images on the CPU)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--scheduler", help="address of an existing dask scheduler, e.g. tcp://head:8786")
    p.add_argument("--overwrite", action="store_true", help="redo images already done with the same recipe")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-image lines")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote them: 'slides/**/*.tif')")
    p.set_defaults(func=cmd_predict)

    f = sub.add_parser("finetune", help="fine-tune a model on corrected labels (images/, labels/)")
    f.add_argument("--model", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True, help="new checkpoint (the loaded one is never overwritten)")
    f.add_argument("--steps", type=int, default=100)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--batch-size", type=int, default=4)
    f.add_argument("--crop", type=int, default=256)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-augment", action="store_true")
    f.add_argument("--train-encoder", action="store_true", help="also train the encoder (frozen by default)")
    f.add_argument("--holdout-fraction", type=float, default=None,
                   help="hold out the right-most fraction F of each image's width: never trained on, scored every "
                        "--validate-every steps; the best-scoring weights are saved")
    f.add_argument("--validate-every", type=int, default=10,
                   help="steps between validations (with --holdout-fraction)")
    f.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 forward passes (2-3x faster on CPUs with AVX512-BF16 or AMX; "
                   "refused where the device lacks bfloat16; not for maskrcnn)")
    f.add_argument("--device", default=None)
    f.set_defaults(func=cmd_finetune)

    a = sub.add_parser("autotune", help="search post-processing parameters on annotated images (no network re-runs)")
    a.add_argument("--model", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--metric", default="object_f1", choices=list(TUNABLE))
    a.add_argument("--params", help="start from these parameters (JSON) instead of the model's")
    a.add_argument("--out", required=True, help="JSON file of the best parameters (usable as --params)")
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_autotune)

    add_export_model(sub)

    e = sub.add_parser("evaluate", help="print the metrics table of a model on an annotated split")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--params")
    e.add_argument("--device", default=None)
    e.add_argument("--foreground-only", action="store_true", help="ablation: use the foreground branch alone")
    e.add_argument("--json", help="also write the summary and per-image metrics here")
    e.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo has its own parser (argparse's REMAINDER drops options)
        from .demo import main as demo_main

        return demo_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InstanceTunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
