"""napari widgets: thin Qt / magicgui shells that read values, call one core function and write layers.

Each widget lives in its own module (``segment.py``, ...); napari imports them on demand through the
manifest (``napari.yaml``), so importing this package loads neither Qt nor torch. Every dock widget builds on
``_base.DockWidget`` (worker start/cancel, layer events, layer choices) and shares state with the others only
through the viewer's session registry (``_sessions.py``: image layer -> ``core.session.SegmentSession``).
"""
