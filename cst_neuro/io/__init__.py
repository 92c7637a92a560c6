"""Readers: every supported format in, one Recording (xarray.Dataset) out."""

from cst_neuro.io.base import READERS, Reader, guess_format, load_readers, open_recording, register

__all__ = ["READERS", "Reader", "guess_format", "load_readers", "open_recording", "register"]
