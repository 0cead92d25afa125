"""Mask R-CNN family: torchvision's detector, cached detections and live post-processing."""
