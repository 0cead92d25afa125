"""Every Python snippet of the README runs as written (issue 23: first contact)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_readme_has_python_snippets():
    assert SNIPPETS, "the README's Python API section lost its snippet"


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs_as_written(index):
    namespace: dict = {}
    exec(compile(SNIPPETS[index], f"README.md python snippet {index + 1}", "exec"), namespace)  # noqa: S102 - our own README
    if "labels" in namespace:  # the Python API snippet: a label image of the synthetic glands
        labels = namespace["labels"]
        assert labels.dtype == np.uint32 and labels.shape == namespace["image"].shape[:2]
        assert labels.max() > 0
        assert namespace["recipe"]["postprocess"]["min_size"] == 2000
