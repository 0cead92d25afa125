"""Headless core: numpy, scipy, scikit-image and (lazily) torch. Never imports Qt, magicgui or napari."""
