"""Command line: ``napari-instance-tuner train|predict|evaluate|finetune|autotune|export-model|models|demo``.

Every command is a thin shell over :mod:`napari_instance_tuner.core.training.jobs`. Options and files are checked
before any work; every failure ends in one line on stderr (exit code 2 for errors the user can fix, 1 for
other failures), with the traceback only under ``--debug``. Nothing existing is replaced without
``--overwrite``, and no output ever replaces an input.

The parser is built in :mod:`._cli_parser`, one module per command (``_cli_train``, ``_cli_predict``,
``_cli_tune``, ``_cli_evaluate``, ``_cli_package``); each family's ``train`` flags come from its
``TrainOptions`` (:mod:`.core.training.options`).
"""

from __future__ import annotations

import sys

from ._cli_evaluate import format_table
from ._cli_parser import build_parser
from ._cli_support import Terminated, error_line, raise_on_sigterm

__all__ = ["build_parser", "format_table", "main"]


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
        from .demo import main as demo_main  # deferred: napari, only for the demo

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
