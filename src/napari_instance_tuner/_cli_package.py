"""``napari-instance-tuner export-model``: write a model as a bioimage.io package and check it."""

from __future__ import annotations

from pathlib import Path

from ._cli_support import float_range
from .core.errors import InstanceTunerError


def cmd_export_model(args) -> int:
    """Write a model as a bioimage.io package and check it with the bioimage.io libraries where installed."""
    from .core.io.bioimageio_export import PackageInfo, export_package  # deferred: command stack
    from .core.io.checkpoint import load_model  # deferred: command stack
    from .core.training.data import read_image  # deferred: command stack

    loaded = load_model(args.model)
    info = PackageInfo(pixel_size=args.pixel_size, license=args.license, description=args.description,
                       sample_name=f"the image {Path(args.sample).name}")
    if args.author:
        info.authors = list(args.author)
    info.maintainers = list(args.maintainer or [])
    out = export_package(loaded, read_image(args.sample), args.out, info)
    print(f"wrote bioimage.io package {out} ({loaded.family.name}, from {loaded.name})")
    if args.no_check:
        return 0
    from .core.io.bioimageio_check import check_package  # deferred: command stack

    try:
        report = check_package(out, reproduce=not args.no_reproduce)
    except InstanceTunerError as exc:  # the bioimageio extra is not installed: the package is still written
        print(f"not checked: {exc}")
        return 0
    print(report.summary())
    return 0 if report.ok else 1


def add_export_model(command) -> None:
    """Register the ``export-model`` subcommand through the CLI's ``command(name, help, examples)`` factory."""
    x = command("export-model", "write a model as a bioimage.io model package (folder or .zip)",
                "  napari-instance-tuner export-model --model three-branch-glas-v2 --out glands.zip "
                "--sample glas/testA/images/testA_1.png\n"
                "  napari-instance-tuner export-model --model my.safetensors --out pkg/ --sample img.tif "
                "--pixel-size 0.5 --author 'A. Person'")
    x.add_argument("--model", required=True, help="shipped model name, checkpoint or bioimage.io package")
    x.add_argument("--out", required=True, help="package to write: a .zip file or a new folder")
    x.add_argument("--sample", required=True,
                   help="a real image of the kind the model segments: the test tensors and cover are cut from it")
    x.add_argument("--pixel-size", type=float_range(0.0, 1e6, low_open=True),
                   help="pixel size (micrometres) of the images the model was made for")
    x.add_argument("--author", action="append", help="author name (repeat for several)")
    x.add_argument("--maintainer", action="append",
                   help="GitHub user name of a maintainer (repeat for several; the check looks it up online)")
    x.add_argument("--license", default="BSD-3-Clause", help="SPDX licence of the weights")
    x.add_argument("--description", help="one-line description (default: the model card's summary)")
    x.add_argument("--no-check", action="store_true", help="skip the bioimageio.spec / bioimageio.core check")
    x.add_argument("--no-reproduce", action="store_true",
                   help="check the format only, do not run the packaged weights on the test tensors")
    x.set_defaults(func=cmd_export_model)
