"""Choosing the device, before torch is imported.

CUDA_VISIBLE_DEVICES is read once, when CUDA initialises; setting it after
`import torch` has touched CUDA does nothing. So `pin_device` runs first thing
in the worker process, and nothing in the worker imports torch at module level
on the way there.
"""
from __future__ import annotations

import os
from typing import MutableMapping


def pin_device(device: str, env: MutableMapping[str, str] = os.environ) -> str:
    """Returns the torch device string to use in this process.

    "cuda:N" hides every other GPU (the process then sees its GPU as cuda:0), so
    one process per GPU never allocates on a neighbour's card.
    """
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit():
            raise ValueError(f"device {device!r}: expected cuda:N with N a GPU index")
        env["CUDA_VISIBLE_DEVICES"] = index
        return "cuda:0"
    if device in ("cpu", "cuda"):
        return device if device == "cpu" else "cuda:0"
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {device} requested but CUDA is not available in this process")
