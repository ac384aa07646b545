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

import re
from typing import TYPE_CHECKING

from usesearch.errors import UsesearchError

if TYPE_CHECKING:  # imported where a device is resolved: a command that loads no model never pays for torch
    import torch

CHOICES = "cpu, cuda or cuda:N"
FAISS_DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def device_fault(device: str | None) -> str | None:
    """What is wrong with ``--device``'s value as spelt (cpu, cuda, cuda:N or auto),
    found without torch as the command line is read: a typo was refused once torch had
    loaded, 4 s in. None where nothing is; whether this machine has the device,
    ``resolve_device`` says."""
    if device is None or re.fullmatch(r"auto|(cpu|cuda)(:\d+)?", device, re.ASCII):
        return None
    if re.fullmatch(r"[a-z_]+(:\d+)?", device, re.ASCII):  # another kind (torch's mps, xpu, ...), or none
        return f"usesearch runs its models on {CHOICES}, not {device!r}"
    return f"{device!r} is not a device; give {CHOICES}"


def faiss_device_fault(faiss_device: str | None) -> str | None:
    """What is wrong with ``--faiss-device``'s value as spelt, as ``device_fault``."""
    if faiss_device is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", faiss_device, re.ASCII):
        return None
    return f"choose one of {', '.join(FAISS_DEVICES)}, not {faiss_device!r}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when torch sees a GPU, else the CPU. An explicit
    device that this machine lacks is refused in one line."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and (fault := device_fault(device)):
        raise UsesearchError(f"--device: {fault}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsesearchError(f"--device: {device!r} is not a device; give {CHOICES}") from None
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
        raise UsesearchError(f"--device: usesearch runs its models on {CHOICES}, not {str(device)!r}")
    return device


# ``--precision``: what the image models compute in. ``auto``: bfloat16 on a GPU that
# computes it natively, float32 elsewhere (a CPU's results stay float32 unless asked).
PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_bf16() -> bool:
    """This CPU computes bfloat16 products natively (Intel's AMX, Sapphire Rapids on; or
    AVX512-BF16, as AMD's Zen 4 on), which oneDNN uses under autocast; elsewhere torch
    emulates bfloat16, slower than float32. torch asks cpuinfo for these (private
    helpers, so an older torch answers no)."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def has_bf16(device: torch.device) -> bool:
    """``device`` computes bfloat16 natively: a GPU of compute capability 8 on (Ampere),
    or a CPU with bfloat16 instructions (``cpu_has_bf16``). Older cards (T4, V100) only
    emulate it, slower than float32, which ``torch.cuda.is_bf16_supported()`` counts by
    default (and it asks the current GPU, not ``device``)."""
    import torch

    if device.type == "cpu":
        return cpu_has_bf16()
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def check_precision(precision: str) -> None:
    """A ``--precision`` that is none of ``PRECISIONS`` refused in one line."""
    if precision not in PRECISIONS:
        raise UsesearchError(f"--precision {precision!r}: give {', '.join(PRECISIONS)}")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether the image models run under bfloat16 autocast on ``device``. ``auto``: on
    a GPU that has it; ``bfloat16`` where ``device`` computes it natively, else refused
    in one line (emulated, it is slower than float32 and no closer to it)."""
    check_precision(precision)
    if precision == "auto":
        return device.type == "cuda" and has_bf16(device)
    if precision == "bfloat16" and not has_bf16(device):
        what = "this CPU has neither AMX nor AVX512-BF16" if device.type == "cpu" else f"{device} is older than Ampere"
        raise UsesearchError(
            f"--precision bfloat16: {what}, so bfloat16 would be emulated, slower than float32; "
            "leave --precision at auto"
        )
    return precision == "bfloat16"


def bf16_autocast(device: torch.device, precision: str = "auto"):
    """bfloat16 autocast where ``uses_bf16`` says so (backbones and SAM: half the bytes,
    the tensor cores' or AMX's rate); a no-op elsewhere, so results stay float32."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def synchronize(device: torch.device) -> None:
    """Wait for the work this thread queued on ``device``, for a stage's clock: its
    current stream's, not the whole device's, whose other streams (the backbones'
    beside SAM, ``models/ahead.py``) run on meanwhile. Nothing on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def out_of_memory_in(exc: BaseException | None) -> BaseException | None:
    """The out-of-memory error in ``exc``'s chain of causes (dynamo and inductor wrap one
    met while compiling in their own errors), else None: raised as itself, so the
    generator, which halves its prompt batch on it, sees it."""
    import torch

    while exc is not None:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def explicit_device(device: str | torch.device | None) -> torch.device | None:
    """An explicit ``--device`` resolved now (refused in one line where this machine
    lacks it); None for the default, which waits for the first model (and torch)."""
    return None if device is None or device == "auto" else resolve_device(device)


def describe(device: torch.device, precision: str = "auto") -> str:
    """One line for run summaries: where the models ran, and in what precision (a
    combination that cannot work is refused here, before any model loads)."""
    import torch

    precision = "bfloat16" if uses_bf16(device, precision) else "float32"
    if device.type != "cuda":
        return "models on the CPU" + (" (bfloat16)" if precision == "bfloat16" else "")
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"models on {device.type}:{index} ({torch.cuda.get_device_name(index)}, {precision})"


def idle_gpus_note(device: torch.device) -> str | None:
    """The run summary's line when ``device`` is one of several GPUs: one process runs
    its models on one card, and a user with eight would otherwise index at an eighth of
    the machine's rate without being told (``--ray`` gives each GPU a model actor)."""
    import torch

    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count < 2:
        return None
    return (
        f"1 of this machine's {count} GPUs in use: --ray runs a model actor on each "
        "(a bare --ray starts Ray on this machine)"
    )


# What a command compiles (``--compile``/``--no-compile``; unset, by the photos it has):
# a GPU command of COMPILE_FROM_PHOTOS photos or more compiles every model: SAM ViT-H's
# image encoder took 28 ms a photo compiled on an H100 against 50 eager, for tens of
# seconds of compiling (fewer once inductor's disk cache holds the graphs), paid back
# in ~1,000-2,000 photos. Under EAGER_BELOW_PHOTOS it compiles nothing: SAM's decoder
# and candidate scoring, which its generator compiles by default on a GPU, took ~8 and
# ~14 s of compiling on the H100 to save ~0.19 s a photo (32x32 points), so a one-photo
# `segment` paid ~23 s of compiling (by those figures). Between the two, the generator's defaults.
COMPILE_FROM_PHOTOS = 1000
EAGER_BELOW_PHOTOS = 100


def compiles(option: bool | None, device_type: str, photos: int) -> bool | None:
    """What a command of ``photos`` photos on ``device_type`` compiles: True, every model
    (SAM's encoder, decoder and scoring, the towers); False, none (not even what SAM's
    generator compiles by default on a GPU); None, the generator's own defaults (on a
    GPU its decoder and candidate scoring; on a CPU its scoring where that pays,
    ``masks.candidate_scoring``). ``option`` (``--compile``/``--no-compile``) decides
    where given; else a CPU keeps the defaults (compiling all gains ~1.4x there, after
    minutes), and a GPU goes by the photo count."""
    if option is not None:
        return option
    if device_type != "cuda":
        return None
    if photos >= COMPILE_FROM_PHOTOS:
        return True
    return False if photos < EAGER_BELOW_PHOTOS else None


def compile_note(option: bool | None, compiled: bool | None, device_type: str, photos: int) -> str | None:
    """The run summary's line on what ``compiles`` chose, where it is news: a GPU run's
    choice either way, a CPU run's only when asked."""
    if option is not None:
        if option or device_type == "cuda":
            return f"models compiled (torch.compile): {'yes' if option else 'no'}, as asked"
        return None
    if device_type != "cuda":
        return None
    if compiled:
        return (
            f"models compiled (torch.compile) for this GPU run's {photos:,} photos to index: tens of seconds first, "
            "then ~1.15x the photos/s; --no-compile skips it"
        )
    if compiled is None:
        return (
            f"SAM's decoder and candidate scoring compiled, the other models not: {photos:,} photos to index, "
            f"under the {COMPILE_FROM_PHOTOS:,} a GPU run compiles all from (--compile to compile all anyway)"
        )
    return (
        f"models not compiled: {photos:,} photos to index, under the {EAGER_BELOW_PHOTOS:,} a GPU run compiles SAM's "
        "decoder from (--compile to compile anyway)"
    )
