"""Readers and writers of files other tools make or open: checkpoints (safetensors + JSON), recipes, images
(input checks), whole slides, label TIFF / PNG / CSV / mask stacks, QuPath GeoJSON, OME-Zarr labels and
pyramids, bioimage.io model packages; every write is atomic.

Headless (numpy, tifffile, tiffslide, shapely, zarr, pyyaml); no Qt, magicgui or napari.
"""
