"""FAISS on a GPU, where the installed faiss has GPU support and a CUDA device is here.

FAISS decides its own device, apart from the models' ``--device``: most GPU machines
have torch with CUDA beside faiss from PyPI without it, and index on the GPU with
FAISS on the CPU. ``--faiss-device`` forces it (``resolve``); ``note`` is the one
line run summaries and ``usesearch info`` print about it.

The CPU index stays the truth and the file format; the GPU holds a mirror of it for
searches without filters (classic GPU indexes ignore an IDSelector, so filtered
searches, and any search while removed ids await a rebuild, run on the CPU index),
and IVF training runs its k-means on the GPU. Anything the GPU refuses falls back to
the CPU with a one-line message.

Install: the faiss-cpu wheel and a GPU wheel both install the module ``faiss``, so
replace one by the other: ``pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12``
(CUDA 12; ``faiss-gpu-cu13-cuvs`` for CUDA 13 with cuVS). ``usesearch info`` shows
which faiss and which device are in use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

import faiss

from usesearch.devices import faiss_device_fault
from usesearch.errors import UsesearchError

log = logging.getLogger(__name__)
INSTALL = "pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"
_resources = None
# One StandardGpuResources and the GPU indexes on it serve one thread at a time
# (faiss's wiki: GPU indexes are not thread-safe, not even for searches), and the
# web app searches from a pool of threads: every use of them holds this lock.
LOCK = threading.Lock()
# Results per query and lists probed per query that classic GPU indexes accept
# (faiss's getMaxKSelection: 2048; cuVS builds allow more): a search asking for more
# (a compressed index's re-scored candidates, 2,400 for the web app's 24 hits) runs on
# the CPU index instead of failing.
MAX_K = 2048


def available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve(faiss_device: str | None) -> str:
    """FAISS's device, ``"cuda"`` (GPU 0), ``"cuda:N"`` or ``"cpu"``. ``None``/``auto``:
    GPU 0 where this faiss has GPU support and sees a GPU, else the CPU; ``cpu``: the
    CPU; ``cuda``, ``cuda:N``: that GPU or a one-line refusal (call it before loading models)."""
    if faiss_device in (None, "auto"):
        return "cuda" if available() else "cpu"
    if fault := faiss_device_fault(faiss_device):
        raise UsesearchError(f"--faiss-device: {fault}")
    number = faiss_device.removeprefix("cuda:") if faiss_device.startswith("cuda:") else None
    if faiss_device.startswith("cuda") and not available():
        import torch

        why = "has no GPU support" if not hasattr(faiss, "StandardGpuResources") else "sees no GPU"
        models = " (the models still use the GPU)" if torch.cuda.is_available() else ""  # else there is none
        raise UsesearchError(
            f"--faiss-device {faiss_device}: this faiss ({faiss.__version__}) {why}; {INSTALL}, "
            f"or leave FAISS on the CPU{models}"
        )
    if number and int(number) >= faiss.get_num_gpus():
        raise UsesearchError(f"--faiss-device {faiss_device}: faiss sees {faiss.get_num_gpus()} GPU(s), from cuda:0")
    return faiss_device


def wanted(faiss_device: str | None) -> bool:
    """True when FAISS should run on a GPU (``resolve`` as a yes or no)."""
    return resolve(faiss_device).startswith("cuda")


def gpu_number(faiss_device: str | None) -> int:
    """The GPU a resolved FAISS device names (``cuda:N``; 0 for ``cuda``)."""
    return int(faiss_device[5:]) if faiss_device and faiss_device.startswith("cuda:") else 0


def note(faiss_device: str | None) -> str:
    """One line: where FAISS runs, and why."""
    if wanted(faiss_device):
        on = gpu_number(resolve(faiss_device))
        return f"FAISS on GPU {on} (faiss {faiss.__version__}, {faiss.get_num_gpus()} GPU(s))"
    if faiss_device == "cpu":
        return f"FAISS on the CPU (--faiss-device cpu; faiss {faiss.__version__})"
    if not _gpu_here():  # (the install hint on a machine with no GPU was noise on every run)
        return f"FAISS on the CPU (faiss {faiss.__version__}; no GPU here)"
    if not hasattr(faiss, "StandardGpuResources"):
        return (
            f"FAISS on the CPU: this faiss ({faiss.__version__}) has no GPU support (for FAISS on the GPU: {INSTALL})"
        )
    return f"FAISS on the CPU: faiss {faiss.__version__} sees no GPU"


def _gpu_here() -> bool:
    """Whether this machine has a CUDA GPU: torch's answer where a model run loaded it, else
    the NVIDIA driver's file (``info`` and the other commands that run no model import no torch)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return os.path.exists("/proc/driver/nvidia/version")


def resources():
    global _resources
    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def mirror(index: faiss.Index, gpu: int = 0) -> faiss.Index | None:
    """A copy of a CPU index on GPU ``gpu`` for searching (call it holding ``LOCK``),
    or None where the GPU cannot hold it."""
    try:
        options = faiss.GpuClonerOptions()
        # IVF-PQ's lookup tables in float16, which it needs past 48-byte codes. Nothing
        # else: a flat index would store (and score) in float16 too, and an exact index's
        # scores are final (never re-scored), so its GPU answers would differ from the CPU's.
        options.useFloat16 = _holds_pq(index)
        return faiss.index_cpu_to_gpu(resources(), gpu, index, options)
    except (RuntimeError, AttributeError) as exc:
        log.warning("the GPU cannot hold this index (%s); searching on the CPU", str(exc).splitlines()[-1])
        return None


def _holds_pq(index: faiss.Index) -> bool:
    try:
        return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ)
    except RuntimeError:  # no IVF inside
        return False


@contextlib.contextmanager
def clustering_on_gpu(index: faiss.Index, gpu: int = 0) -> Iterator[None]:
    """Within it, an IVF index's training runs its coarse k-means on the GPU (FAISS's
    ``clustering_index``); the GPU copy is freed after. Assigning it hands the object
    to C++, which never frees it (and k-means leaves the centroids in it: 200 MB of
    GPU memory at 65,536 x 768), so it is taken back and dropped."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # nothing to cluster
        yield
        return
    with LOCK:
        # The IVF's own metric, as the CPU's k-means assigns through its quantizer (for our
        # inner-product IVFs, spherical k-means, L2 assigns alike: the same for any IVF).
        helper = faiss.index_cpu_to_gpu(resources(), gpu, faiss.IndexFlat(ivf.d, ivf.metric_type))
        ivf.clustering_index = helper
        try:
            yield
        finally:
            ivf.clustering_index = None  # type: ignore[assignment]  # (a null pointer; the stub says Index)
            helper.thisown = True  # type: ignore[attr-defined]  # Python's again: freed with the last reference
            del helper
