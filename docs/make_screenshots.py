"""Regenerate the user guide's screenshots from the code (run under Xvfb on a machine without a display).

Usage: xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py
Each picture is written by the same ``napari-instance-tuner demo`` that the quick start runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_instance_tuner.demo import main as demo

HERE = Path(__file__).resolve().parent / "images"


def main() -> int:
    HERE.mkdir(exist_ok=True)
    for sample in ("glands",):
        code = demo(["--sample", sample, "--screenshot", str(HERE / f"segment-{sample}.png"),
                     "--labels", str(Path("/tmp") / f"segment-{sample}-labels.tif")])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
