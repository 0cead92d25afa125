"""File names made from layer names."""

from __future__ import annotations

import re


def safe_name(name: str, default: str = "labels") -> str:
    """A layer name as a file base name: path separators and odd characters become ``_``.

    Letters (any script), digits, ``.``, ``_``, ``-`` and spaces are kept; leading and trailing dots and spaces
    go (no hidden files); ``default`` when nothing is left.

    Examples
    --------
    >>> safe_name("img 1/labels:v2")
    'img 1_labels_v2'
    >>> safe_name("..", "image")
    'image'
    """
    return re.sub(r"[^\w.\- ]+", "_", str(name)).strip(" .") or default
