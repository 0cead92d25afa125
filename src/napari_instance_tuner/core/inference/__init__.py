"""Inference: an image in, instances out, at any size: normalisation, pixel-size resampling, tiled
prediction with test-time flips, stacks, streaming of images larger than memory (lazy reading,
one window at a time, overlapped pipeline, stitching), whole slides with tissue detection, batches
and dask workers. Headless; torch is imported lazily.
"""
