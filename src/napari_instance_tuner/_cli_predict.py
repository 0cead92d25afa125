"""``napari-instance-tuner predict``: batch segmentation of files, folders and globs (see :mod:`.core.inference.batch`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._cli_support import float_range, int_range
from .core.errors import InstanceTunerError
from .core.inference.runtime import RUNTIMES, choose_runtime, model_family
from .core.registry import example_model


def cmd_predict(args) -> int:
    """Batch segmentation (see :mod:`.core.inference.batch`): files, folders or globs -> labels next to ``recipe.json``."""
    from .core.inference.batch import (  # deferred: command stack
        BatchJob,
        check_outputs,
        expand_inputs,
        run_batch,
        summary_table,
    )
    from .core.inference.distributed import ModelRef, executor  # deferred: command stack
    from .core.inference.predict import choose_device  # deferred: command stack
    from .core.inference.runtime import load_for_runtime  # deferred: command stack
    from .core.inference.slide_segment import parse_roi  # deferred: command stack
    from .core.inference.streaming import StreamSettings  # deferred: command stack
    from .core.io.recipe import make_recipe, recipe_model, recipe_params  # deferred: command stack
    from .core.training.jobs import load_params  # deferred: command stack

    device = args.device
    network_tile = args.network_tile
    streamed: dict = {}
    if args.recipe:  # the recipe's weights (SHA-256 checked; --model names them if moved) and parameters
        from .core.io.recipe import load_recipe  # deferred: command stack

        if args.params:
            raise InstanceTunerError("--params cannot be combined with --recipe (the recipe fixes the parameters)")
        recipe = load_recipe(args.recipe)
        streamed = recipe.get("streaming")  # the tiles and halo the recipe's labels were streamed with
        streamed = streamed if isinstance(streamed, dict) else {}
        if device is None and recipe.get("runtime") == "onnx":  # ONNX Runtime ran on the CPU
            device = "cpu"
        elif device is None:  # the recorded device where this machine has it
            try:
                device = choose_device(recipe.get("device") or "cpu")
            except InstanceTunerError:
                device = "cpu"
        runtime, note = recorded_runtime(args.runtime, recipe, device, args.amp or bool(streamed.get("amp", False)))
        loaded = recipe_model(recipe, args.model, runtime)
        params = recipe_params(recipe, loaded)
        network_tile = network_tile or (recipe.get("tiling") or {}).get("tile_size")
        if note and not args.quiet:
            print(f"note: {note}", file=sys.stderr)
    elif args.model:
        runtime = choose_runtime(args.runtime, model_family(args.model), device, args.amp)
        loaded = load_for_runtime(args.model, runtime)
        params = load_params(loaded, args.params)
        recipe = make_recipe(loaded, params, "<batch>", (), device=device or "auto", tile_size=network_tile)
    else:
        raise InstanceTunerError("predict needs --model or --recipe")
    if runtime == "onnx":  # ONNX Runtime runs on the CPU: torch is never asked about a GPU
        device = "cpu"
        recipe["device"] = "cpu"
    recipe["runtime"] = runtime
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
    job = BatchJob(ModelRef(str(loaded.path), loaded.sha256, loaded, runtime), params, recipe, inputs, Path(args.out),
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


def recorded_runtime(requested: str | None, recipe: dict, device: str | None, amp: bool) -> tuple[str, str | None]:
    """The runtime of a replay: ``requested``, else the recipe's (torch for older recipes); a recorded ONNX
    Runtime that cannot run here falls back to torch, with a note (maps then differ by float32 rounding)."""
    from .core.inference.runtime import why_not_onnx  # deferred: command stack

    if requested is not None:
        return choose_runtime(requested, recipe["family"], device, amp), None
    if recipe.get("runtime") != "onnx":
        return "torch", None
    reason = why_not_onnx(recipe["family"], device, amp, explicit=True)
    if reason:
        return "torch", f"the recipe ran ONNX Runtime, which cannot run here ({reason}); torch runs instead"
    return "onnx", None


def _formats(text: str | None) -> list[str] | None:
    """``--format tif,geojson`` -> ["tif", "geojson"] (checked against the known formats)."""
    from .core.inference.slide_segment import FORMATS  # deferred: command stack

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
    from .core.inference.distributed import default_workers  # deferred: command stack

    return default_workers(1)


def _run_with_bar(work, total: int, quiet: bool):
    """Drive a batch generator with a tqdm progress bar on stderr (images; tiles of a large image as postfix)."""
    from tqdm import tqdm  # deferred: tqdm, only while a command runs

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


def add_predict(command) -> None:
    """The ``predict`` sub-command; ``command(name, help, examples)`` makes its parser."""
    p = command("predict", "segment images, folders or glob patterns (resumable; dask for scale-out)",
                f"  napari-instance-tuner predict --model {example_model()} --out labels/ slides/\n"
                "  napari-instance-tuner predict --model my.safetensors --params best.json --out labels/ 'data/**/*.tif'\n"
                "  napari-instance-tuner predict --recipe labels/recipe.json --out again/ slides/a.tif")
    p.add_argument("--model", help="shipped model name or checkpoint path (with --recipe: the moved weights)")
    p.add_argument("--params", help="JSON of post-processing parameters (or a recipe)")
    p.add_argument("--recipe", help="recipe JSON written by an export: reproduce its labels exactly")
    p.add_argument("--out", required=True, help="output folder (labels, sidecars and recipe.json)")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto (default: the recipe's, else auto)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="what runs the network: onnx (ONNX Runtime: no torch import, the network exported once into "
                        "the user's cache folder), torch, or auto: onnx for three-branch and layering models on the "
                        "CPU without --amp, else torch (default: the recipe's, else auto)")
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

