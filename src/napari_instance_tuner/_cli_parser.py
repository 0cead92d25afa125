"""The argument parser of ``napari-instance-tuner``: one sub-command per module (``_cli_<command>.py``)."""

from __future__ import annotations

import argparse

from ._cli_evaluate import add_evaluate
from ._cli_package import add_export_model
from ._cli_predict import add_predict
from ._cli_train import add_train
from ._cli_tune import add_autotune, add_finetune
from .core.registry import example_model

DESCRIPTION = ("Segment, evaluate, train and fine-tune instance segmentation models from the command line. "
               "Run 'napari-instance-tuner COMMAND --help' for the options of a command.")


def epilog() -> str:
    """The examples under the top-level help (the example model is the default family's)."""
    return f"""examples:
  napari-instance-tuner models
  napari-instance-tuner predict --model {example_model()} --out labels/ slides/
  napari-instance-tuner evaluate --model {example_model()} --data glas/test --json metrics.json
  napari-instance-tuner autotune --model my.safetensors --data data/val --out params.json
  napari-instance-tuner train --data data/train --out my.safetensors --epochs 50
  napari-instance-tuner finetune --model my.safetensors --data corrected/ --out my-ft.safetensors

Add --debug to any command to see the full traceback of a failure."""


def cmd_models(args) -> int:
    """Print the shipped weights: name, family, summary, file (and what they are the default for)."""
    from .core.io.checkpoint import model_card, shipped_models  # deferred: safetensors

    for name, path in shipped_models().items():
        card = model_card(name)
        default = "".join(f"\tdefault for {kind} images" for kind in card.get("default_for", []))
        print(f"{name}\t{card.get('family', '?')}\t{card.get('summary', '')}\t{path}{default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command; each sets ``func`` (``args.func(args)`` runs it)."""
    form = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="napari-instance-tuner", description=DESCRIPTION, epilog=epilog(),
                                     formatter_class=form)
    parser.add_argument("--debug", action="store_true", help="show the full Python traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, examples: str):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog="examples:\n" + examples, formatter_class=form)

    sub.add_parser("demo", help="open napari with the plugin on a segmented sample (see demo --help)")

    m = command("models", "list the shipped weights (name, family, summary, file)", "  napari-instance-tuner models")
    m.set_defaults(func=cmd_models)
    add_train(command)
    add_predict(command)
    add_finetune(command)
    add_autotune(command, model_and_data)
    add_export_model(command)
    add_evaluate(command, model_and_data)
    return parser


def model_and_data(parser: argparse.ArgumentParser, params_help: str) -> None:
    """The options evaluate and autotune share: --model, --data, --params, --device, --quiet."""
    parser.add_argument("--model", required=True, help="shipped model name or checkpoint path")
    parser.add_argument("--data", required=True, help="folder with images/ and labels/")
    parser.add_argument("--params", help=params_help)
    parser.add_argument("--device", default=None, help="torch device: cpu, cuda, mps or auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")
