"""Where the models run: one rule for every model a command loads.

``--device`` means the models' device and nothing else (SAM, SAM 2, CLIP, DINOv2,
the head, the region query's SAM, curation's and training's models). Its default
is CUDA when torch sees a GPU, else the CPU. FAISS picks its own device
(``indexer.faiss_gpu.resolve``, ``--faiss-device``): a torch with CUDA beside a
faiss without GPU support is the common case and must index on the GPU.

``check`` refuses a device that cannot work before any model is loaded, so a
typo costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usesearch.errors import UsesearchError

if TYPE_CHECKING:  # imported where a device is resolved: a command that loads no model never pays for torch
    import torch

CHOICES = "cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when torch sees a GPU, else the CPU. An explicit
    device that this machine lacks is refused in one line."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsesearchError(f"--device {device!r} is not a device; give {CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsesearchError(
                f"--device {device} was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsesearchError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
            )
    elif device.type != "cpu":
        raise UsesearchError(f"--device {device}: usesearch runs its models on {CHOICES}")
    return device


def has_bf16(device: torch.device) -> bool:
    """``device`` is a GPU that computes bfloat16 natively: compute capability 8 on
    (Ampere). Older cards (T4, V100) only emulate it, slower than float32, which
    ``torch.cuda.is_bf16_supported()`` counts by default (and it asks the current
    GPU, not ``device``)."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def bf16_autocast(device: torch.device):
    """bfloat16 autocast on a GPU that has it (backbones and SAM: half the bytes,
    the tensor cores' rate); a no-op elsewhere, so CPU results are float32 as before."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=has_bf16(device))


def explicit_device(device: str | torch.device | None) -> torch.device | None:
    """An explicit ``--device`` resolved now (refused in one line where this machine
    lacks it); None for the default, which waits for the first model (and torch)."""
    return None if device is None or device == "auto" else resolve_device(device)


def describe(device: torch.device) -> str:
    """One line for run summaries: where the models ran."""
    import torch

    if device.type != "cuda":
        return "models on the CPU"
    index = device.index if device.index is not None else torch.cuda.current_device()
    precision = "bfloat16" if has_bf16(device) else "float32"
    return f"models on {device.type}:{index} ({torch.cuda.get_device_name(index)}, {precision})"
