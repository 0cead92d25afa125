"""napari-instance-tuner: segment object instances, tune them live, correct, fine-tune and export.

Importing the package is cheap: torch, Qt and napari are imported only by the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
