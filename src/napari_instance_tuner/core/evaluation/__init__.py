"""Evaluation: instance-segmentation metrics (:mod:`.metrics`), scores of whole label layers,
error maps, per-object measurements, and auto-tuning of post-processing parameters on cached maps.
"""
