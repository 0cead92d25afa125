"""Model families: one folder each, registered in :mod:`..registry`."""
