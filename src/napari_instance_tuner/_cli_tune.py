"""``napari-instance-tuner finetune`` and ``autotune``: tune weights on corrected labels, or post-processing
parameters on annotated images."""

from __future__ import annotations

import json

import numpy as np

from ._cli_data import channel_notes, check_data_folder, pairs_from_split, predict_all
from ._cli_support import check_out_file, float_range, int_range, run_with_bar
from .core.errors import InstanceTunerError
from .core.registry import example_model


def amp_help() -> str:
    """Help of ``--amp`` (train, finetune), naming the families that cannot train in mixed precision."""
    from .core.registry import family_names, get_family  # deferred: family modules

    refused = "".join(f"; not for {name}" for name in family_names() if not get_family(name).supports_amp)
    return ("mixed precision: bfloat16 forward passes (2-3x faster on CPUs with AVX512-BF16 or AMX; "
            f"refused where the device lacks bfloat16{refused})")


def cmd_finetune(args) -> int:
    from .core.io.checkpoint import load_model  # deferred: command stack
    from .core.training.finetune import FinetuneSettings, finetune, save_finetuned  # deferred: command stack
    if args.holdout_fraction is not None and not 0 < args.holdout_fraction < 1:
        raise InstanceTunerError(f"--holdout-fraction must lie between 0 and 1, got {args.holdout_fraction}")
    loaded = load_model(args.model)
    check_out_file(args.out, args.overwrite, inputs=(loaded.path,))
    check_data_folder(args.data)
    pairs = pairs_from_split(args.data)
    channel_notes(loaded, pairs, args.quiet)
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
    from .core.evaluation.autotune import autotune  # deferred: command stack
    from .core.evaluation.layer_metrics import score_function  # deferred: command stack
    from .core.io.checkpoint import load_model  # deferred: command stack
    from .core.io.safe_write import write_text  # deferred: command stack
    from .core.params import params_to_dict  # deferred: command stack
    from .core.training.data import load_split  # deferred: command stack
    from .core.training.jobs import load_params  # deferred: command stack

    loaded = load_model(args.model)
    params = load_params(loaded, args.params)
    out = check_out_file(args.out, args.overwrite, inputs=(args.params, loaded.path))
    check_data_folder(args.data)
    samples = load_split(args.data)
    channel_notes(loaded, samples, args.quiet)
    maps = run_with_bar(predict_all(loaded, samples, args.device), args.quiet, "image", "network")
    score = score_function(args.metric)
    refs = [s.reference for s in samples]
    best, before, after = run_with_bar(autotune(loaded.family.postprocess, maps, refs, params, score), args.quiet,
                                       "trial", "search")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"postprocess": params_to_dict(best)}, indent=1) + "\n", overwrite=args.overwrite)
    print(f"{args.metric}: {before:.4f} -> {after:.4f} on {len(samples)} images; parameters written to {args.out}")
    return 0


def add_finetune(command) -> None:
    """The ``finetune`` sub-command; ``command(name, help, examples)`` makes its parser."""
    positive = float_range(0.0, 1e3, low_open=True)
    f = command("finetune", "fine-tune a model on corrected labels (images/, labels/)",
                "  napari-instance-tuner finetune --model my.safetensors --data corrected/ --out my-ft.safetensors\n"
                f"  napari-instance-tuner finetune --model {example_model()} --data corrected/ --out ft.safetensors "
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
    f.add_argument("--amp", action="store_true", help=amp_help())
    f.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto (default: cpu)")
    f.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    f.set_defaults(func=cmd_finetune)



def add_autotune(command, model_and_data) -> None:
    """The ``autotune`` sub-command; ``model_and_data(parser, params_help)`` adds the shared options."""
    from .core.evaluation.layer_metrics import TUNABLE  # deferred: scipy (metrics); the CLI starts without it

    a = command("autotune", "search post-processing parameters on annotated images (no network re-runs)",
                "  napari-instance-tuner autotune --model my.safetensors --data data/val --out best.json\n"
                "  napari-instance-tuner predict --model my.safetensors --params best.json --out labels/ slides/")
    model_and_data(a, "start from these parameters (JSON or a recipe) instead of the model's")
    a.add_argument("--metric", default="object_f1", choices=list(TUNABLE), help="the score to maximise")
    a.add_argument("--out", required=True, help="JSON file of the best parameters (usable as --params)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a.set_defaults(func=cmd_autotune)

