"""Reading and writing models and data in other tools' formats (bioimage.io model packages)."""
