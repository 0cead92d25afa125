"""The Segment widget's note on large images: what its controls do for an image streamed tile by tile."""

from __future__ import annotations

from typing import Any


def streamed_note(session: Any, params_family: str | None, params: Any, would_stream: bool) -> str:
    """The note for the selected image, or "" when the controls re-compute its labels live.

    Parameters
    ----------
    session : SegmentSession or None
        The image's session.
    params_family : str or None
        The family whose controls the widget shows.
    params : dataclass or None
        The controls' values.
    would_stream : bool
        Whether the image was, or Run would be, streamed (no cached maps).
    """
    streamed = None if session is None else session.streamed
    if streamed is not None:
        tiles = f"{streamed.tiles} tile{'s' if streamed.tiles != 1 else ''}"
        note = f"large image: streamed in {tiles}; parameter changes apply on the next Run"
        if params_family == session.family.name and params != session.params:
            note += " (the labels shown were made with other values)"
        return note
    if would_stream:
        return "large image: Run streams it tile by tile (no cached maps); parameter changes apply on the next Run"
    return ""
