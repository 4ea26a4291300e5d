"""What a set of models' weights will take in memory, read from their safetensors headers before loading.

A safetensors file starts with an 8-byte length and a JSON header giving every tensor's
dtype and shape: enough to size the weights without reading them. Floating-point
tensors are counted at the dtype the worker loads them in (fp16 on CUDA, fp32 on the
CPU), others as stored. A worker refuses at start, before minutes of loading, a set
whose weights exceed its budget: the GPU's memory times VISIONQ_GPU_MEMORY_FRACTION on
CUDA, VISIONQ_MEMORY_BUDGET_MB on the CPU. Activations come on top: the budget is a
floor to fit, not a promise that every batch fits.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Mapping

from tasks.errors import ModelError
from worker.pipelines.base import ModelSpec

MIB = 2**20
_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                 "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER_BYTES = 100 * MIB  # the format's own cap


def weights_bytes(spec: ModelSpec, float_bytes: int) -> int:
    """Bytes of `spec`'s weights once loaded with floats of `float_bytes` (2: fp16, 4: fp32)."""
    headers = _headers(spec)
    if not headers:
        raise ModelError(f"{spec.label!r} has no safetensors weights to size (visionq loads safetensors only)")
    return sum(_tensor_bytes(tensor, float_bytes) for header in headers for tensor in header.values())


def read_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {"dtype", "shape", ...} of one safetensors file, without reading its data;
    ModelError naming the file when it is truncated or is no safetensors file."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > _MAX_HEADER_BYTES:
                raise ModelError(f"{path}: safetensors header of {length} bytes is not plausible")
            header = json.loads(file.read(length))
        if not isinstance(header, dict):
            raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
    except (OSError, struct.error, ValueError) as exc:  # ValueError: JSON and UTF-8 decoding
        raise ModelError(f"{path}: not a readable safetensors file (truncated or corrupted?): {exc}") from None
    header.pop("__metadata__", None)
    return header


class ModelsDoNotFit(ModelError):
    """A worker's models need more memory than its budget: it refuses to start."""


def check_fits(estimates: Mapping[str, int], budget_bytes: int | None, budget_name: str) -> None:
    """Refuse a set of models (name -> weights bytes) whose total exceeds the budget; None: no budget."""
    if budget_bytes is None:
        return
    total = sum(estimates.values())
    if total > budget_bytes:
        digits = 1  # enough that the need reads larger than the budget (0.1 MiB over 0.1 MiB would not)
        while digits < 6 and f"{total / MIB:.{digits}f}" == f"{budget_bytes / MIB:.{digits}f}":
            digits += 1
        each = ", ".join(f"{name} {size / MIB:,.{digits}f} MiB" for name, size in estimates.items())
        raise ModelsDoNotFit(
            f"the models' weights need {total / MIB:,.{digits}f} MiB ({each}), more than {budget_name} allows "
            f"({budget_bytes / MIB:,.{digits}f} MiB): serve fewer models on this worker or raise the budget"
        )


def memory_budget(device: str, gpu_memory_fraction: float | None,
                  memory_budget_mb: float | None) -> tuple[int | None, str]:
    """(bytes, what sets them) for this worker: its GPU's share on CUDA, the MiB budget on the CPU."""
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        fraction = gpu_memory_fraction or 1.0
        return int(total * fraction), f"the GPU's {total / MIB:,.0f} MiB x VISIONQ_GPU_MEMORY_FRACTION {fraction:g}"
    if memory_budget_mb is None:
        return None, "no VISIONQ_MEMORY_BUDGET_MB"
    return int(memory_budget_mb * MIB), f"VISIONQ_MEMORY_BUDGET_MB {memory_budget_mb:g}"


def _tensor_bytes(tensor: Mapping[str, Any], float_bytes: int) -> int:
    dtype = tensor["dtype"]
    size = float_bytes if dtype in _FLOATS else _STORED_BYTES[dtype]
    return math.prod(tensor["shape"]) * size


def _headers(spec: ModelSpec) -> list[dict[str, dict[str, Any]]]:
    folder = Path(spec.model_id)
    if not folder.is_dir():
        folder = _cached_snapshot(spec)
    if folder is not None:
        return [read_header(path) for path in loaded_files(folder)]
    return _hub_headers(spec)


def loaded_files(folder: Path) -> list[Path]:
    """The safetensors files a from_pretrained of `folder` reads.

    A diffusers pipeline (model_index.json) reads its components' sub-folders, not a
    single-file checkpoint beside them, and a two-model family its models' sub-folders; a `name.fp16.safetensors` variant is read only
    when asked for, which the worker never does.
    """
    if (folder / "model_index.json").is_file():
        components = json.loads((folder / "model_index.json").read_text())
        files = [path for name in components if (folder / name).is_dir()
                 for path in sorted((folder / name).glob("*.safetensors"))]
    else:
        # A family of two models keeps them in sub-folders (owlv2-sam: detector/ and segmenter/).
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*/*.safetensors"))
    names = {str(path.relative_to(folder)) for path in files}
    return [path for path in files if not _is_variant(str(path.relative_to(folder)), names)]


def _is_variant(name: str, names: set[str]) -> bool:
    stem, *variant = name[: -len(".safetensors")].split(".", 1)
    return bool(variant) and f"{stem}.safetensors" in names


def _cached_snapshot(spec: ModelSpec) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.model_id, revision=spec.revision, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*/*.safetensors"]))
    except Exception:  # noqa: BLE001 - not in the local cache: ask the hub for the headers alone
        return None


def _hub_headers(spec: ModelSpec) -> list[dict[str, dict[str, Any]]]:
    """Headers over HTTP range requests: the weights are not downloaded."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        names = [n for n in api.list_repo_files(spec.model_id, revision=spec.revision) if n.endswith(".safetensors")]
        if "model_index.json" in api.list_repo_files(spec.model_id, revision=spec.revision):
            names = [n for n in names if "/" in n]  # the pipeline's components, not a single-file checkpoint
        else:
            names = [n for n in names if "/" not in n]
        names = [n for n in names if not _is_variant(n, set(names))]
        return [
            {name: {"dtype": info.dtype, "shape": info.shape} for name, info in
             api.parse_safetensors_file_metadata(spec.model_id, n, revision=spec.revision).tensors.items()}
            for n in names
        ]
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, no access: the model cannot be sized
        raise ModelError(f"cannot read the safetensors headers of {spec.label!r}: {exc}") from exc
