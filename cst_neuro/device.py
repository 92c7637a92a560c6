"""Where models run: the device a user asked for, checked against what the machine has."""

from __future__ import annotations

import torch

from cst_neuro.errors import InputError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "--device cuda was requested but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(None, f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)
