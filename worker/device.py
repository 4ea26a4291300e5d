"""Choosing the device, before torch is imported.

CUDA_VISIBLE_DEVICES is read once, when CUDA initialises; setting it after
`import torch` has touched CUDA does nothing. So `pin_device` runs first thing
in the worker process, and nothing in the worker imports torch at module level
on the way there.
"""
from __future__ import annotations

import os
import sys
from typing import Any, MutableMapping

# (device, allocated bytes, reserved bytes) rows that this worker's model process reported
# (worker/model_process.py): with VISIONQ_MODEL_PROCESS the worker's own process never
# initialises CUDA, and these stand for its figures.
_reported_gpu_memory: list[tuple[str, float, float]] = []


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
    """ValueError (`visionq worker` exits 2, as for any setting this machine cannot take) for a
    CUDA device where torch sees none."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available in this process")


def gpu_memory() -> list[tuple[str, float, float]]:
    """(device, allocated bytes, reserved bytes) per CUDA device this worker uses: this process's
    own figures, or, where this process never initialised CUDA, the latest its model process
    reported; none before CUDA is up (or on the CPU).

    Never initialises CUDA itself (a scrape during loading must not race the loader)."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return list(_reported_gpu_memory)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    physical = [part.strip() for part in visible.split(",") if part.strip()]
    rows = []
    for index in range(torch.cuda.device_count()):
        # The GPU's index on the host, as nvidia-smi shows it, when the worker is pinned.
        label = f"cuda:{physical[index]}" if index < len(physical) else f"cuda:{index}"
        rows.append((label, float(torch.cuda.memory_allocated(index)), float(torch.cuda.memory_reserved(index))))
    return rows


def report_gpu_memory(rows: list[tuple[str, float, float]]) -> None:
    """The model process's figures, as `gpu_memory` gives them in the worker's process."""
    _reported_gpu_memory[:] = rows
