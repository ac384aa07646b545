"""FAISS on a GPU, where the installed faiss has GPU support and a CUDA device is here.

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

import logging

import faiss

from usesearch.errors import UsesearchError

log = logging.getLogger("usesearch.index")
INSTALL = "pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"
_resources = None


def available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def wanted(device: str | None) -> bool:
    """``None``/``auto``: the GPU when there is one; ``cpu``: never; ``cuda``: must."""
    if device == "cpu" or (device is not None and device.startswith("cpu")):
        return False
    if device is not None and device.startswith("cuda") and not available():
        raise UsesearchError(f"--device cuda: this faiss ({faiss.__version__}) has no GPU support or sees no GPU; {INSTALL}")
    return available()


def resources():
    global _resources
    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def mirror(index: faiss.Index) -> faiss.Index | None:
    """A GPU copy of a CPU index for searching, or None where the GPU cannot hold it."""
    try:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True  # IVF-PQ lookup tables in float16: needed past 48-byte codes
        return faiss.index_cpu_to_gpu(resources(), 0, index, options)
    except (RuntimeError, AttributeError) as exc:
        log.warning("the GPU cannot hold this index (%s); searching on the CPU", str(exc).splitlines()[-1])
        return None


def train_on_gpu(index: faiss.Index) -> None:
    """Let an IVF index run its coarse k-means on the GPU (FAISS's clustering_index)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.clustering_index = faiss.index_cpu_to_gpu(resources(), 0, faiss.IndexFlatL2(ivf.d))
