"""Readers and writers of files other tools make or open: whole slides, QuPath GeoJSON, OME-Zarr labels.

Headless (numpy, tifffile, tiffslide, shapely, zarr); no Qt, magicgui or napari.
"""
