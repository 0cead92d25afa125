"""Layering family: objects distributed over N output layers (layering paper)."""
