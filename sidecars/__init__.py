"""Trained IndexMem sidecars of the registry models (written by indexmem-convert from checkpoints/)."""
