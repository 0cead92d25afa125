"""Command line: ``napari-instance-tuner train|predict|evaluate|finetune|autotune|export-model|models|demo``.

Every command is a thin shell over :mod:`napari_instance_tuner.core.jobs`. Options and files are checked
before any work; every failure ends in one line on stderr (exit code 2 for errors the user can fix, 1 for
other failures), with the traceback only under ``--debug``. Nothing existing is replaced without
``--overwrite``, and no output ever replaces an input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ._cli_support import (
    Terminated,
    check_out_file,
    error_line,
    float_range,
    int_range,
    raise_on_sigterm,
    run_with_bar,
)
from ._cli_package import add_export_model
from .core.errors import InstanceTunerError
from .core.progress import Progress

DESCRIPTION = ("Segment, evaluate, train and fine-tune instance segmentation models from the command line. "
               "Run 'napari-instance-tuner COMMAND --help' for the options of a command.")
EPILOG = """examples:
  napari-instance-tuner models
  napari-instance-tuner predict --model three-branch-glas --out labels/ slides/
  napari-instance-tuner evaluate --model three-branch-glas --data glas/test --json metrics.json
  napari-instance-tuner autotune --model my.safetensors --data data/val --out params.json
  napari-instance-tuner train --data data/train --out my.safetensors --epochs 50
  napari-instance-tuner finetune --model my.safetensors --data corrected/ --out my-ft.safetensors

Add --debug to any command to see the full traceback of a failure."""


def _progress_printer(quiet: bool, bar=None):
    """A progress callback for ``train``: one stdout line per epoch and per stage message; with a tqdm
    ``bar`` (on stderr) also the training steps done, so that a run shows life before its first epoch."""
    last = {"msg": None}

    def say(text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def show(p) -> None:
        if quiet:
            return
        if bar is not None and "epoch" in p.message and p.total:
            if p.total != bar.total:
                bar.reset(total=p.total)
            bar.n = min(p.done, p.total)
            bar.refresh()
        if "epoch" in p.info:  # an epoch record: one line each
            rec = p.info
            extra = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith("val_"))
            say(f"epoch {rec['epoch']:4d} loss={rec['loss']:.4f} {extra} t={rec['time']:.0f}s")
        elif p.message != last["msg"] and "tile" not in p.message and "epoch" not in p.message:
            say(p.message)
        last["msg"] = p.message

    return show


def cmd_models(args) -> int:
    from .core.checkpoint import model_card, shipped_models

    for name, path in shipped_models().items():
        card = model_card(name)
        default = "".join(f"\tdefault for {kind} images" for kind in card.get("default_for", []))
        print(f"{name}\t{card.get('family', '?')}\t{card.get('summary', '')}\t{path}{default}")
    return 0


def _augment_extra(args) -> dict:
    """AugmentConfig fields set by ``train``'s optional augmentation flags (none: the defaults)."""
    extra = {}
    if args.stain_jitter is not None:
        extra["p_stain"] = args.stain_jitter
    if args.stain_strength is not None:
        extra["stain_strength"] = args.stain_strength
    if args.elastic is not None:
        extra["p_elastic"] = args.elastic
    return extra


def cmd_train(args) -> int:
    from .core.jobs import TrainOptions, train_job
    from .core.progress import run
    from .core.training import TrainConfig

    check_out_file(args.out, args.overwrite, inputs=(args.init_weights,))
    _check_data_folder(args.data)
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
        pixel_size_um=args.pixel_size_um,
        crop=args.crop, batch_size=args.batch_size, val_fraction=args.val_fraction, train=train, targets=targets,
        family_options=family_options,
        augment=not args.no_augment, augment_extra=_augment_extra(args), extra_data=args.extra_data or [],
        autotune=not args.no_autotune, device=args.device, workdir=args.workdir,
        name=args.name, half=not args.float32,
    )
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    from tqdm import tqdm

    with tqdm(total=0, unit="step", desc="train", disable=args.quiet, file=sys.stderr, dynamic_ncols=True,
              mininterval=1.0) as bar:
        out = run(train_job(options), _progress_printer(args.quiet, bar))
    print(f"saved {out}")
    return 0


def cmd_predict(args) -> int:
    """Batch segmentation (see :mod:`.core.batch`): files, folders or globs -> labels next to ``recipe.json``."""
    from .core.batch import BatchJob, check_outputs, expand_inputs, run_batch, summary_table
    from .core.checkpoint import load_model
    from .core.distributed import ModelRef, executor
    from .core.inference import choose_device
    from .core.jobs import load_params
    from .core.recipe import make_recipe, recipe_model, recipe_params
    from .core.slide_segment import parse_roi
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
        streamed = recipe.get("streaming")  # the tiles and halo the recipe's labels were streamed with
        streamed = streamed if isinstance(streamed, dict) else {}
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
    tile = args.tile if args.tile is not None else _recorded_int(streamed, "tile", 2048, 0, 1 << 20)
    halo = args.halo if args.halo is not None else _recorded_int(streamed, "halo", 256, 0, 4096)
    if tile and not 64 <= tile <= 1 << 20:
        raise InstanceTunerError(f"--tile must be 0 (never stream) or from 64 to {1 << 20} px, got {tile}")
    if tile and halo > tile:
        raise InstanceTunerError(f"--halo {halo} is larger than --tile {tile}: every tile would read more context "
                                 "than image; use a smaller --halo or a larger --tile")
    if network_tile is not None and not (isinstance(network_tile, int) and 32 <= network_tile <= 8192):
        raise InstanceTunerError(f"the recipe's tile_size {network_tile!r} is not a whole number from 32 to 8192")
    settings = StreamSettings(tile=tile if tile > 0 else 1 << 30, halo=halo, network_tile=network_tile,
                              amp=args.amp or bool(streamed.get("amp", False)))
    recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}
    recipe["image"] = {"name": "<batch>", "shape": []}
    recipe["streaming"] = settings.to_dict()
    all_tiles = args.all_tiles or bool(streamed.get("all_tiles", False))
    if all_tiles:
        recipe["streaming"]["all_tiles"] = True
    formats, roi = _formats(args.format), (parse_roi(args.roi) if args.roi else None)
    if formats or roi or args.pixel_size:
        recipe["output"] = {"formats": formats, "roi": roi, "pixel_size_um": args.pixel_size}
    workers = args.workers
    if args.scheduler is None and workers is None:  # auto: one image or a GPU runs here
        on_gpu = choose_device(device) != "cpu"
        serial = len(inputs) == 1 or on_gpu or "output" in recipe  # slides, regions, formats: streamed here
        workers = 0 if serial else min(len(inputs), _cores() // args.threads_per_worker) or 0
        workers = 0 if workers == 1 else workers
    job = BatchJob(ModelRef(str(loaded.path), loaded.sha256, loaded), params, recipe, inputs, Path(args.out),
                   settings, device, resume=not args.overwrite,
                    threads=args.threads_per_worker if (workers or args.scheduler) else None,
                    formats=tuple(formats) if formats else None, roi=roi, pixel_size_um=args.pixel_size,
                    skip_background=False if all_tiles else None)
    check_outputs(job)  # before any work: no input replaced, nothing of the user's replaced without --overwrite
    with executor(args.scheduler, workers, args.threads_per_worker) as ex:
        where = "here" if workers == 0 and args.scheduler is None else f"on {ex.workers} dask workers ({ex.address})"
        if not args.quiet:
            print(f"{len(inputs)} images, model {loaded.name}, {where}", file=sys.stderr, flush=True)
        reports = _run_with_bar(run_batch(job, ex), len(inputs), args.quiet)
    for r in reports:
        if r.note and not args.quiet:
            print(f"note: {Path(r.image).name}: {r.note}", file=sys.stderr)
        if r.status == "done" and not args.quiet:
            if formats:
                print(f"{r.image} -> {', '.join(str(Path(args.out) / o) for o in r.outputs)} ({r.objects} objects)")
            else:
                print(f"{r.image} -> {Path(args.out) / r.outputs[0]} ({r.objects} objects"
                      + (f", masks in {r.outputs[1]}" if len(r.outputs) > 1 else "") + ")")
    for note in dict.fromkeys(n for r in reports for n in r.notes):  # each note once, not once per image
        print(f"note: {note}", file=sys.stderr)
    print(summary_table(reports))
    failed = [r for r in reports if r.status == "failed"]
    for r in failed:
        print(f"error: {r.image}: {r.error}", file=sys.stderr)
    return 2 if failed else 0


def _formats(text: str | None) -> list[str] | None:
    """``--format tif,geojson`` -> ["tif", "geojson"] (checked against the known formats)."""
    from .core.slide_segment import FORMATS

    if not text:
        return None
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    names = ["tif" if f == "tiff" else f for f in names]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise InstanceTunerError(f"--format {text!r}: valid formats are {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def _recorded_int(recorded: dict, key: str, default: int, low: int, high: int) -> int:
    """A whole-number setting a recipe recorded (``default`` when absent), checked against its range."""
    value = recorded.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InstanceTunerError(f"the recipe's streaming {key} {value!r} is not a whole number from {low} to {high}")
    return value


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
    if args.holdout_fraction is not None and not 0 < args.holdout_fraction < 1:
        raise InstanceTunerError(f"--holdout-fraction must lie between 0 and 1, got {args.holdout_fraction}")
    loaded = load_model(args.model)
    check_out_file(args.out, args.overwrite, inputs=(loaded.path,))
    _check_data_folder(args.data)
    pairs = _pairs_from_split(args.data)
    _channel_notes(loaded, pairs, args.quiet)
    if args.holdout_fraction is not None:  # the right-most fraction of each image's width is validated on
        for p in pairs:
            p.holdout = np.zeros(np.shape(p.labels), bool)
            p.holdout[:, p.holdout.shape[1] - max(1, round(args.holdout_fraction * p.holdout.shape[1])):] = True
    settings = FinetuneSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
                                augment=not args.no_augment, freeze_encoder=not args.train_encoder, seed=args.seed,
                                validate_every=args.validate_every, amp=args.amp)
    model, result = run_with_bar(finetune(loaded, pairs, settings, device=args.device or "cpu"), args.quiet,
                                 "step", "fine-tune")
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
    from .core.safe_write import write_text

    loaded = load_model(args.model)
    params = load_params(loaded, args.params)
    out = check_out_file(args.out, args.overwrite, inputs=(args.params, loaded.path))
    _check_data_folder(args.data)
    samples = load_split(args.data)
    _channel_notes(loaded, samples, args.quiet)
    maps = run_with_bar(_predict_all(loaded, samples, args.device), args.quiet, "image", "network")
    score = score_function(args.metric)
    refs = [s.reference for s in samples]
    best, before, after = run_with_bar(autotune(loaded.family.postprocess, maps, refs, params, score), args.quiet,
                                       "trial", "search")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"postprocess": params_to_dict(best)}, indent=1) + "\n", overwrite=args.overwrite)
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
    from .core.safe_write import write_text

    loaded = load_model(args.model)
    params = load_params(loaded, args.params)
    if args.json:
        check_out_file(args.json, args.overwrite, "--json", inputs=(args.params, loaded.path))
    _check_data_folder(args.data)
    if args.foreground_only:
        # Table V ablation: the foreground branch alone (threshold, denoise, components, S_min).
        from dataclasses import replace

        params = replace(params, subtract_boundaries=False, require_centroid=False, grow_back=0)
    samples = load_split(args.data)
    _channel_notes(loaded, samples, args.quiet)
    rows = run_with_bar(_images_only(evaluate_samples(loaded, samples, params, device=args.device), "evaluated"),
                        args.quiet, "image", "evaluate")
    summary = summarise(rows, read_groups(args.data))
    print(f"model {loaded.name} on {args.data} ({len(rows)} images)")
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps({"summary": summary, "per_image": rows}, indent=1) + "\n",
                   overwrite=args.overwrite)
    return 0


def _check_data_folder(data: str) -> None:
    """A clear message for a missing --data folder or one without images/ and labels/, before any work."""
    path = Path(data)
    if not path.exists():
        raise InstanceTunerError(f"--data {data!r} does not exist; give a folder with images/ and labels/")
    if not path.is_dir():
        raise InstanceTunerError(f"--data {data!r} is a file; give a folder with images/ and labels/")
    missing = [name for name in ("images", "labels") if not (path / name).is_dir()]
    if missing:
        raise InstanceTunerError(f"--data {data!r} has no {' or '.join(n + '/' for n in missing)} folder; "
                                 "it must hold images/<id>.png|.tif and labels/<id>.tif")


def _channel_notes(loaded, samples, quiet: bool) -> None:
    """Print how each image's channels are converted for the model; refuse counts it cannot take."""
    from .core.inputs import channel_note

    in_channels = int(loaded.meta.get("in_channels", 3))
    for s in samples:
        try:
            note = channel_note(np.shape(s.image), in_channels)
        except InstanceTunerError as exc:
            raise InstanceTunerError(f"{getattr(s, 'name', 'image')}: {exc}") from None
        if note and not quiet:
            print(f"note: {getattr(s, 'name', 'image')}: {note}", file=sys.stderr)


def _predict_all(loaded, samples, device):
    """The network maps of every sample, one progress record per image."""
    maps = []
    for i, s in enumerate(samples):
        gen = loaded.family.predict_maps(loaded.model, s.image, loaded.meta, device=device)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                maps.append(stop.value)
                break
        yield Progress(i + 1, len(samples), f"network on {s.name}")
    return maps


def _images_only(work, prefix: str):
    """Pass on the records of ``work`` whose message starts with ``prefix`` (one per image); return its result."""
    while True:
        try:
            p = next(work)
        except StopIteration as stop:
            return stop.value
        if p.message.startswith(prefix):
            yield p


def build_parser() -> argparse.ArgumentParser:
    from .core.evaluation import TUNABLE  # numpy/scipy only: the CLI still starts without torch

    form = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="napari-instance-tuner", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=form)
    parser.add_argument("--debug", action="store_true", help="show the full Python traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, examples: str):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog="examples:\n" + examples, formatter_class=form)

    sub.add_parser("demo", help="open napari with the plugin on a segmented sample (see demo --help)")

    m = command("models", "list the shipped weights (name, family, summary, file)", "  napari-instance-tuner models")
    m.set_defaults(func=cmd_models)

    positive = float_range(0.0, 1e3, low_open=True)
    t = command("train", "train a model on an annotated folder (images/, labels/)",
                "  napari-instance-tuner train --data data/train --out my.safetensors --epochs 50\n"
                "  napari-instance-tuner train --family layering --data worms/train --out worms.safetensors")
    t.add_argument("--family", default="three-branch", help="model family: three-branch, layering or maskrcnn")
    t.add_argument("--data", required=True, help="split folder with images/ and labels/")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors); an existing one needs --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.add_argument("--name", help="model name stored in the checkpoint (default: file stem)")
    t.add_argument("--pixel-scale", type=float_range(0.0, 64.0, low_open=True), default=0.5,
                   help="resize factor before the network (0.5: half resolution)")
    t.add_argument("--pixel-size-um", type=float_range(0.0, 1e6, low_open=True), metavar="UM",
                   help="µm per pixel of the training images, recorded in the checkpoint: images and slides of "
                        "another pixel size are resampled to it before segmentation")
    t.add_argument("--base-channels", type=int_range(1, 1024), default=16, help="features of the first U-Net level")
    t.add_argument("--depth", type=int_range(1, 8), default=4, help="U-Net levels")
    t.add_argument("--conv-type", default="separable", choices=["standard", "separable", "space_depth_separable"],
                   help="convolution type of the U-Net blocks")
    t.add_argument("--norm", default="batch", choices=["batch", "group"], help="normalisation layers")
    t.add_argument("--branches", help="comma-separated subset of foreground,boundary,centroid (ablations)")
    t.add_argument("--boundary-width", type=float_range(0.0, 1e3), default=11.0,
                   help="boundary target width, px at the paper's 256-px scale")
    t.add_argument("--centroid-width", type=float_range(0.0, 1e3), default=14.0,
                   help="centroid target width, px at the paper's 256-px scale")
    t.add_argument("--centroid-mode", default="bbox", choices=["bbox", "inside"],
                   help="centroid target: the bounding-box centre, or a point inside the object")
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
    t.add_argument("--paste-crossings", type=float_range(0.0, 1.0),
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
    t.add_argument("--layers", type=int_range(1, 64), default=8, help="layering: N output layers")
    t.add_argument("--head-channels", type=int_range(1, 1024), default=64,
                   help="layering: features of the two head convolutions")
    t.add_argument("--phase1-epochs", type=int_range(0, 100_000),
                   help="layering: epochs of layering training (default 2/3 of --epochs)")
    t.add_argument("--phase2-epochs", type=int_range(0, 100_000),
                   help="layering: epochs of overlap completion (default the rest)")
    t.add_argument("--epochs", type=int_range(1, 100_000), default=150, help="training epochs")
    t.add_argument("--steps-per-epoch", type=int_range(1, 1_000_000), default=10, help="optimiser steps per epoch")
    t.add_argument("--batch-size", type=int_range(1, 1024), default=8, help="crops per step")
    t.add_argument("--crop", type=int_range(16, 8192), default=256, help="training crop edge, network pixels")
    t.add_argument("--lr", type=positive, default=1e-3, help="learning rate")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                   help="sgd: momentum 0.9 (torchvision's detection recipe; give it a larger --lr, e.g. 0.02)")
    t.add_argument("--weight-decay", type=float_range(0.0, 10.0), default=0.0,
                   help="weight decay of the optimiser (0 to 10)")
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, select and ship an exponential moving average of the weights (e.g. 0.99; 0: off)")
    t.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 forward passes (2-3x faster on CPUs with AVX512-BF16 or AMX; "
                   "refused where the device lacks bfloat16; not for maskrcnn)")
    t.add_argument("--patience", type=int_range(1), default=20,
                   help="stop after this many validations without improvement")
    t.add_argument("--validate-every", type=int_range(1), default=2, help="epochs between validations")
    t.add_argument("--val-fraction", type=float_range(0.0, 0.9), default=0.18,
                   help="fraction of the images (whole patients where known) held out for validation")
    t.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="random seed")
    t.add_argument("--max-minutes", type=float_range(0.0, 1e6, low_open=True), help="stop training after this time")
    t.add_argument("--threads", type=int_range(1, 1024), help="torch threads (default: all cores)")
    t.add_argument("--loader-workers", type=int_range(0, 64), default=0,
                   help="processes that make training batches ahead of a GPU (0: in the training process)")
    t.add_argument("--workdir", default="checkpoints", help="folder for resume files (git-ignored)")
    t.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps or auto")
    t.add_argument("--no-augment", action="store_true", help="train without random augmentation")
    t.add_argument("--stain-jitter", type=float_range(0.0, 1.0), metavar="P",
                   help="probability of HED stain jitter per crop (RGB only; default 0 = off)")
    t.add_argument("--stain-strength", type=float_range(0.0, 1.0), metavar="S",
                   help="HED jitter strength: stains scaled by U(1-S, 1+S) and shifted (default 0.05)")
    t.add_argument("--elastic", type=float_range(0.0, 1.0), metavar="P",
                   help="probability of an elastic deformation per sample (three-branch; default 0 = off)")
    t.add_argument("--extra-data", action="append", metavar="DIR",
                   help="another split folder whose images are added to training only (repeatable); images "
                        "of validation patients (GlaS Grade.csv) are left out")
    t.add_argument("--no-autotune", action="store_true",
                   help="keep the default post-processing instead of tuning it on the validation split")
    t.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)

    p = command("predict", "segment images, folders or glob patterns (resumable; dask for scale-out)",
                "  napari-instance-tuner predict --model three-branch-glas --out labels/ slides/\n"
                "  napari-instance-tuner predict --model my.safetensors --params best.json --out labels/ 'data/**/*.tif'\n"
                "  napari-instance-tuner predict --recipe labels/recipe.json --out again/ slides/a.tif")
    p.add_argument("--model", help="shipped model name or checkpoint path (with --recipe: the moved weights)")
    p.add_argument("--params", help="JSON of post-processing parameters (or a recipe)")
    p.add_argument("--recipe", help="recipe JSON written by an export: reproduce its labels exactly")
    p.add_argument("--out", required=True, help="output folder (labels, sidecars and recipe.json)")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto (default: the recipe's, else auto)")
    p.add_argument("--tile", type=int_range(0, 1 << 20),
                   help="images larger than this (px) are streamed tile by tile into <stem>.zarr; 0 = never, "
                   "for images up to 64 megapixels (default: the recipe's, else 2048)")
    p.add_argument("--halo", type=int_range(0, 4096),
                   help="context around each tile (px); objects smaller than this are stitched exactly "
                   "(default: the recipe's, else 256)")
    p.add_argument("--network-tile", type=int_range(32, 8192),
                   help="tile size inside the network (default: the model's)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast on CUDA, bfloat16 on a CPU with AVX512-BF16 or AMX "
                   "(1.6-2.7x faster here); float32 elsewhere")
    p.add_argument("--workers", type=int_range(0, 256),
                   help="worker processes of an embedded dask cluster (0 = run here; default: one per core "
                        "when there are several images on the CPU)")
    p.add_argument("--threads-per-worker", type=int_range(1, 1024), default=1, help="torch threads per dask worker")
    p.add_argument("--scheduler", help="address of an existing dask scheduler, e.g. tcp://head:8786")
    p.add_argument("--format", metavar="F[,F...]",
                   help="outputs DIR/<stem>.<ext> among tif, zarr (OME-Zarr labels), geojson (QuPath), csv, in the "
                        "image's level-0 pixels; images and slides are segmented at the model's pixel size "
                        "(default: the label TIFF <stem>.tif, or <stem>.zarr for a streamed image)")
    p.add_argument("--roi", metavar="X,Y,W,H", help="segment only this region (level-0 pixels)")
    p.add_argument("--pixel-size", type=float_range(0.0, 1e6, low_open=True), metavar="UM",
                   help="µm per level-0 pixel of the inputs, instead of what the files record")
    p.add_argument("--all-tiles", action="store_true",
                   help="run every tile of a slide (default: tiles without tissue on the slide's coarsest level, "
                        "found as QuPath and HistoQC do, are never sent to the network)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images already done with the same recipe, and replace files in --out that an "
                   "earlier run did not write (inputs are never replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, notes or per-image lines")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote them: 'slides/**/*.tif')")
    p.set_defaults(func=cmd_predict)

    f = command("finetune", "fine-tune a model on corrected labels (images/, labels/)",
                "  napari-instance-tuner finetune --model my.safetensors --data corrected/ --out my-ft.safetensors\n"
                "  napari-instance-tuner finetune --model three-branch-glas --data corrected/ --out ft.safetensors "
                "--holdout-fraction 0.2")
    f.add_argument("--model", required=True, help="shipped model name or checkpoint path to start from")
    f.add_argument("--data", required=True, help="folder with images/ and labels/ (the corrected labels)")
    f.add_argument("--out", required=True,
                   help="new checkpoint (the loaded one is never overwritten; an existing file needs --overwrite)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    f.add_argument("--steps", type=int_range(1, 1_000_000), default=100, help="optimiser steps")
    f.add_argument("--lr", type=positive, default=1e-4, help="learning rate")
    f.add_argument("--batch-size", type=int_range(1, 1024), default=4, help="crops per step")
    f.add_argument("--crop", type=int_range(16, 8192), default=256, help="training crop edge, network pixels")
    f.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="random seed")
    f.add_argument("--no-augment", action="store_true", help="fine-tune without random augmentation")
    f.add_argument("--train-encoder", action="store_true", help="also train the encoder (frozen by default)")
    f.add_argument("--holdout-fraction", type=float, default=None,
                   help="hold out the right-most fraction F of each image's width: never trained on, scored every "
                        "--validate-every steps; the best-scoring weights are saved")
    f.add_argument("--validate-every", type=int_range(1), default=10,
                   help="steps between validations (with --holdout-fraction)")
    f.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 forward passes (2-3x faster on CPUs with AVX512-BF16 or AMX; "
                   "refused where the device lacks bfloat16; not for maskrcnn)")
    f.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto (default: cpu)")
    f.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    f.set_defaults(func=cmd_finetune)

    a = command("autotune", "search post-processing parameters on annotated images (no network re-runs)",
                "  napari-instance-tuner autotune --model my.safetensors --data data/val --out best.json\n"
                "  napari-instance-tuner predict --model my.safetensors --params best.json --out labels/ slides/")
    _model_and_data(a, "start from these parameters (JSON or a recipe) instead of the model's")
    a.add_argument("--metric", default="object_f1", choices=list(TUNABLE), help="the score to maximise")
    a.add_argument("--out", required=True, help="JSON file of the best parameters (usable as --params)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a.set_defaults(func=cmd_autotune)

    add_export_model(command)

    e = command("evaluate", "print the metrics table of a model on an annotated split",
                "  napari-instance-tuner evaluate --model three-branch-glas --data glas/test\n"
                "  napari-instance-tuner evaluate --model my.safetensors --data data/val --params best.json "
                "--json metrics.json")
    _model_and_data(e, "post-processing parameters (JSON or a recipe) instead of the model's")
    e.add_argument("--foreground-only", action="store_true", help="ablation: use the foreground branch alone")
    e.add_argument("--json", help="also write the summary and per-image metrics here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=cmd_evaluate)
    return parser


def _model_and_data(parser: argparse.ArgumentParser, params_help: str) -> None:
    """The options evaluate and autotune share: --model, --data, --params, --device, --quiet."""
    parser.add_argument("--model", required=True, help="shipped model name or checkpoint path")
    parser.add_argument("--data", required=True, help="folder with images/ and labels/")
    parser.add_argument("--params", help=params_help)
    parser.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0: success; 2: an error the user can fix (a bad option value, file, weights or output), printed as one line;
    1: another failure, also one line; 130: interrupted (Ctrl-C), 143: terminated. ``--debug`` (anywhere
    before the image arguments) shows the traceback instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["demo"]:  # the demo has its own parser (argparse's REMAINDER drops options)
        from .demo import main as demo_main

        return demo_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    raise_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; outputs already finished are kept, nothing partial is left", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; outputs already finished are kept, nothing partial is left", file=sys.stderr)
        return 143
    except Exception as exc:
        if debug:
            raise
        line, code = error_line(exc)
        print(f"error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
