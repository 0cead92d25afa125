"""Readers and writers of files other tools make or open: whole slides, QuPath GeoJSON, OME-Zarr labels,
bioimage.io model packages.

Headless (numpy, tifffile, tiffslide, shapely, zarr, pyyaml); no Qt, magicgui or napari.
"""
