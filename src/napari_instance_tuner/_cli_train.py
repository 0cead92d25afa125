"""``napari-instance-tuner train``: generic flags here, each family's own flags from its ``TrainOptions``."""

from __future__ import annotations

import argparse
import json
import sys

from ._cli_data import check_data_folder
from ._cli_support import check_out_file, float_range, int_range
from ._cli_tune import amp_help
from .core.errors import InstanceTunerError
from .core.progress import run
from .core.registry import DEFAULT_FAMILY, family_names, get_family
from .core.training.options import declared_options, options_from


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
    """Train a model of ``--family``; its own options come from the flags its ``TrainOptions`` declares."""
    from .core.training.jobs import TrainOptions, train_job  # deferred: the training stack
    from .core.training.loop import TrainConfig  # deferred: the training stack, when train runs

    check_out_file(args.out, args.overwrite, inputs=(getattr(args, "init_weights", None),))
    check_data_folder(args.data)
    try:  # TrainConfig checks its values (ValueError): an error message, not a traceback
        train = TrainConfig(
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr, patience=args.patience,
            validate_every=args.validate_every, seed=args.seed, max_minutes=args.max_minutes,
            loader_workers=args.loader_workers, optimizer=args.optimizer, weight_decay=args.weight_decay,
            ema_decay=args.ema, amp=args.amp, lr_decay_from=args.lr_decay_from,
        )
    except ValueError as exc:
        raise InstanceTunerError(f"train: {exc}") from exc
    family = get_family(args.family)
    family_options = options_from(family.TrainOptions, args)  # the flags the family declares
    arch = {}
    if args.arch_json:  # any other architecture key of the family's config, e.g. '{"mask_head_channels": 64}'
        try:
            arch.update(json.loads(args.arch_json))
        except (ValueError, TypeError) as exc:
            raise InstanceTunerError(f"--arch-json is not a JSON object: {exc}") from exc
    options = TrainOptions(
        data=args.data, out=args.out, family=args.family, architecture=arch, pixel_scale=args.pixel_scale,
        pixel_size_um=args.pixel_size_um,
        crop=args.crop, batch_size=args.batch_size, val_fraction=args.val_fraction, split_seed=args.split_seed,
        train=train,
        family_options=family_options,
        augment=not args.no_augment, augment_extra=_augment_extra(args), extra_data=args.extra_data or [],
        autotune=not args.no_autotune, device=args.device, workdir=args.workdir,
        name=args.name, half=not args.float32,
    )
    import torch  # deferred: torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    from tqdm import tqdm  # deferred: only when training

    with tqdm(total=0, unit="step", desc="train", disable=args.quiet, file=sys.stderr, dynamic_ncols=True,
              mininterval=1.0) as bar:
        out = run(train_job(options), _progress_printer(args.quiet, bar))
    print(f"saved {out}")
    return 0




def _argument(declaration: dict) -> dict:
    """argparse keywords of one :func:`~.core.training.options.option` declaration."""
    kind, bounds = declaration["type"], declaration["range"]
    if kind is bool:
        return {"action": "store_true", "help": declaration["help"]}
    keywords = {"default": declaration["default"], "help": declaration["help"]}
    if bounds is not None:
        keywords["type"] = (int_range(*bounds) if kind is int
                            else float_range(*bounds, low_open=declaration["low_open"]))
    elif kind is not str:
        keywords["type"] = kind
    if declaration["choices"] is not None:
        keywords["choices"] = declaration["choices"]
    if declaration["metavar"] is not None:
        keywords["metavar"] = declaration["metavar"]
    return keywords


def add_family_options(parser: argparse.ArgumentParser, families: list) -> None:
    """Add the flags that the families' ``TrainOptions`` declare, each once.

    Raises
    ------
    RuntimeError
        Two families declare one flag differently (a programming error: one flag has one meaning).
    """
    seen: dict[str, tuple[str, dict]] = {}
    for family in families:
        for name, declaration in declared_options(family.TrainOptions):
            flag = declaration["flag"]
            if flag in seen:
                if seen[flag][1] != declaration:
                    raise RuntimeError(f"{flag} is declared differently by the {seen[flag][0]} and {family.name} "
                                       "families")
                continue
            seen[flag] = (family.name, declaration)
            parser.add_argument(flag, dest=name, **_argument(declaration))


def add_train(command) -> None:
    """The ``train`` sub-command; ``command(name, help, examples)`` makes its parser."""
    positive = float_range(0.0, 1e3, low_open=True)
    names = [DEFAULT_FAMILY, *(n for n in family_names() if n != DEFAULT_FAMILY)]
    families = [get_family(n) for n in names]
    examples = "".join(f"\n  napari-instance-tuner train {f.train_example}" for f in families if f.train_example)
    t = command("train", "train a model on an annotated folder (images/, labels/)",
                "  napari-instance-tuner train --data data/train --out my.safetensors --epochs 50" + examples)
    t.add_argument("--family", default=DEFAULT_FAMILY, help=f"model family: {', '.join(names[:-1])} or {names[-1]}")
    t.add_argument("--data", required=True, help="split folder with images/ and labels/")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors); an existing one needs --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.add_argument("--name", help="model name stored in the checkpoint (default: file stem)")
    t.add_argument("--pixel-scale", type=float_range(0.0, 64.0, low_open=True), default=0.5,
                   help="resize factor before the network (0.5: half resolution)")
    t.add_argument("--pixel-size-um", type=float_range(0.0, 1e6, low_open=True), metavar="UM",
                   help="µm per pixel of the training images, recorded in the checkpoint: images and slides of "
                        "another pixel size are resampled to it before segmentation")
    t.add_argument("--arch-json", help="JSON object of further architecture keys (see the family's config class)")
    t.add_argument("--epochs", type=int_range(1, 100_000), default=150, help="training epochs")
    t.add_argument("--steps-per-epoch", type=int_range(1, 1_000_000), default=10, help="optimiser steps per epoch")
    t.add_argument("--batch-size", type=int_range(1, 1024), default=8, help="crops per step")
    t.add_argument("--crop", type=int_range(16, 8192), default=256, help="training crop edge, network pixels")
    t.add_argument("--lr", type=positive, default=1e-3, help="learning rate")
    t.add_argument("--lr-decay-from", type=int_range(0), metavar="EPOCH",
                   help="three-branch, Mask R-CNN: keep --lr until this epoch, then decay it to 0 at --epochs along a "
                        "cosine (default: constant)")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                   help="sgd: momentum 0.9 (torchvision's detection recipe; give it a larger --lr, e.g. 0.02)")
    t.add_argument("--weight-decay", type=float_range(0.0, 10.0), default=0.0,
                   help="weight decay of the optimiser (0 to 10)")
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, select and ship an exponential moving average of the weights (e.g. 0.99; 0: off)")
    t.add_argument("--amp", action="store_true", help=amp_help())
    t.add_argument("--patience", type=int_range(1), default=20,
                   help="stop after this many validations without improvement")
    t.add_argument("--validate-every", type=int_range(1), default=2, help="epochs between validations")
    t.add_argument("--val-fraction", type=float_range(0.0, 0.9), default=0.18,
                   help="fraction of the images (whole patients where known) held out for validation; 0: train on "
                        "every image, keep the last weights and the default post-processing")
    t.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="random seed")
    t.add_argument("--split-seed", type=int_range(0, 2**32 - 1),
                   help="seed that draws the validation images (default: --seed); keep it to compare seeds")
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
                   help="probability of an elastic deformation per sample "
                   f"({', '.join(f.name for f in families if f.elastic_augmentation)}; default 0 = off)")
    t.add_argument("--extra-data", action="append", metavar="DIR",
                   help="another split folder whose images are added to training only (repeatable); images "
                        "of validation patients (GlaS Grade.csv) are left out")
    t.add_argument("--no-autotune", action="store_true",
                   help="keep the default post-processing instead of tuning it on the validation split")
    t.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_family_options(t, families)
    t.set_defaults(func=cmd_train)
