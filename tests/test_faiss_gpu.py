"""FAISS's GPU path (``indexer/faiss_gpu.py``): the real thing where this faiss has a
GPU, and on a CPU the routing around it, against a stand-in for a GPU index that
refuses what classic GPU faiss refuses and notices two threads inside at once."""

import threading
import time
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from usesearch.errors import UsesearchError
from usesearch.indexer import faiss_gpu, index_kinds, vectors


def test_gpu_faiss_path():
    if not faiss_gpu.available():
        pytest.skip(
            f"no GPU faiss here (faiss {faiss.__version__}, CPU build or no CUDA device); "
            f"on a CUDA machine: {faiss_gpu.INSTALL}"
        )
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5000, 64)).astype(np.float32)
    index = faiss.index_factory(64, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    with faiss_gpu.clustering_on_gpu(index):
        index.train(data)
    assert faiss.extract_index_ivf(index).clustering_index is None
    index.add_with_ids(data, np.arange(5000))
    gpu = faiss_gpu.mirror(index)
    assert gpu is not None
    np.testing.assert_array_equal(gpu.search(data[:5], 1)[1][:, 0], np.arange(5))


def test_cuda_asked_for_without_gpu_faiss_is_a_clear_error():
    if faiss_gpu.available():
        pytest.skip("this machine has GPU faiss")
    with pytest.raises(UsesearchError, match="faiss-gpu"):
        faiss_gpu.wanted("cuda")
    assert not faiss_gpu.wanted(None) and not faiss_gpu.wanted("cpu")


class GpuStandIn:
    """Answers as the CPU index it copies; refuses k past 2048 as classic GPU faiss
    does (``validateKSelect``), or every search with ``failing``; counts searches that
    overlapped another (GPU indexes are not thread-safe)."""

    def __init__(self, index, failing: str = ""):
        self.index, self.failing = index, failing
        self.asked: list[int] = []
        self.inside = self.overlaps = 0

    def search(self, query, k):
        self.inside += 1
        self.overlaps += self.inside > 1
        try:
            time.sleep(0.002)  # a search's time on the card: long enough for threads to meet
            if k > 2048:
                raise RuntimeError(f"Error: GPU index only supports min/max-K selection up to 2048 (requested {k})")
            if self.failing:
                raise RuntimeError(self.failing)
            self.asked.append(k)
            return self.index.search(query, k)
        finally:
            self.inside -= 1


@pytest.fixture()
def gpu_wanted(monkeypatch):
    """FAISS on the "GPU": every mirror built is a ``GpuStandIn``, listed in order."""
    built: list[GpuStandIn] = []

    def mirror(index, gpu=0):
        built.append(GpuStandIn(faiss.clone_index(index)))
        built[-1].gpu = gpu
        return built[-1]

    monkeypatch.setattr(faiss_gpu, "wanted", lambda device: device.startswith("cuda"))
    monkeypatch.setattr(faiss_gpu, "mirror", mirror)
    return built


def exact_vectors(device, n=3000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    v = vectors.Vectors(index_kinds.new_index(dim, "IDMap2,Flat"), device)
    v.add(np.arange(1, n + 1), data)
    return v, data


def test_a_search_for_more_than_a_gpu_index_returns_is_answered_on_the_cpu(gpu_wanted):
    on_gpu, data = exact_vectors("cuda")
    on_cpu, _ = exact_vectors("cpu")
    query = data[7]
    for k in (10, 2048, 2100, 2400):  # 2400: a compressed index's re-scored candidates for the web app's 24 hits
        got = on_gpu.search(query, k)
        want = on_cpu.search(query, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert len(gpu_wanted) == 1 and gpu_wanted[0].asked == [10, 2048]  # the larger ones never reached it


def test_an_ivf_probing_more_lists_than_a_gpu_index_takes_searches_on_the_cpu(gpu_wanted):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((3000, 32)).astype(np.float32)
    index = index_kinds.new_index(32, "IVF16,Flat")
    index.train(data)
    v = vectors.Vectors(index, "cuda")
    v.add(np.arange(1, 3001), data)
    v.search(data[0], 5)
    assert gpu_wanted[0].asked == [5]
    faiss.extract_index_ivf(v.index).nprobe = faiss_gpu.MAX_K + 1  # (the CPU clamps it to its 16 lists)
    v.refresh_mirror()
    assert v.search(data[0], 5)[1][0] == 1
    assert len(gpu_wanted) == 1  # no mirror built, none asked


def test_faiss_on_a_gpu_named_mirrors_and_trains_there(gpu_wanted, cloned_to_cpu, monkeypatch):
    """``--faiss-device cuda:1`` (the models on another card): FAISS was put on GPU 0 whatever was named."""
    v, data = exact_vectors("cuda:1")
    v.search(data[0], 5)
    assert [mirror.gpu for mirror in gpu_wanted] == [1]
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, gpu, index, options=None: gpus.append(gpu) or index)
    gpus: list[int] = []
    store = SimpleNamespace(
        segment_ids=lambda: np.arange(1, 2001),
        embeddings=lambda ids: iter([(ids, np.tile(data[:1000], (2, 1))[np.asarray(ids) - 1])]),
    )
    vectors._train_if_needed(index_kinds.new_index(32, "IVF16,Flat"), store, "cuda:2")
    assert gpus == [2]
    assert faiss_gpu.gpu_number("cuda") == faiss_gpu.gpu_number(None) == 0


@pytest.mark.parametrize("named", ["cuda:x", "cuda:", "gpu", "cuda:-1", "cuda:\u00b2"])  # (a superscript 2 is a digit)
def test_a_faiss_device_misspelt_is_refused_in_one_line(named):
    with pytest.raises(UsesearchError, match=f"^--faiss-device: choose one of auto, cpu, cuda, cuda:N, not '{named}'$"):
        faiss_gpu.resolve(named)


def test_a_gpu_search_that_fails_is_said_once_and_answered_on_the_cpu_until_the_index_changes(
    gpu_wanted, monkeypatch, caplog
):
    built = gpu_wanted
    monkeypatch.setattr(
        faiss_gpu,
        "mirror",
        lambda index, gpu: built.append(GpuStandIn(faiss.clone_index(index), "out of memory")) or built[-1],
    )
    v, data = exact_vectors("cuda")
    want = exact_vectors("cpu")[0].search(data[3], 5)
    for _ in range(3):
        np.testing.assert_array_equal(v.search(data[3], 5)[1], want[1])
    assert len(built) == 1 and [r.message for r in caplog.records if "GPU failed" in r.message] == [
        "FAISS on the GPU failed (out of memory); searching on the CPU"
    ]
    v.add(np.array([9999]), data[:1])
    v.search(data[3], 5)
    assert len(built) == 2  # a changed index: a new mirror is tried


def test_threads_searching_at_once_take_the_gpu_one_at_a_time(gpu_wanted):
    v, data = exact_vectors("cuda")
    want = [exact_vectors("cpu")[0].search(data[i], 5)[1] for i in range(8)]
    got: dict[int, list] = {}
    start = threading.Barrier(8)

    def searcher(i):
        start.wait()
        got[i] = [v.search(data[i], 5)[1] for _ in range(10)]

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(gpu_wanted) == 1, "the mirror was built more than once"
    assert gpu_wanted[0].overlaps == 0 and len(gpu_wanted[0].asked) == 80
    for i in range(8):
        for answer in got[i]:
            np.testing.assert_array_equal(answer, want[i])


@pytest.fixture()
def cloned_to_cpu(monkeypatch):
    """``index_cpu_to_gpu`` as a CPU clone, recording what it was given and made."""
    calls = []

    def to_gpu(resources, device, index, options=None):
        calls.append(SimpleNamespace(options=options, copy=faiss.clone_index(index)))
        return calls[-1].copy

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", SimpleNamespace, raising=False)
    monkeypatch.setattr(faiss_gpu, "resources", lambda: None)
    return calls


def test_only_ivf_pq_is_copied_to_the_gpu_in_float16(cloned_to_cpu):
    """An exact index's scores are final: in float16 on the GPU they would differ from
    the CPU's (its filtered searches). IVF-PQ needs float16 lookup tables past 48-byte codes."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal((2000, 32)).astype(np.float32)
    for factory, half in (("IDMap2,Flat", False), ("IVF16,Flat", False), ("IVF16,PQ8", True)):
        index = index_kinds.new_index(32, factory)
        index.train(data)
        assert faiss_gpu.mirror(index) is cloned_to_cpu[-1].copy
        assert cloned_to_cpu[-1].options.useFloat16 is half, factory


def test_gpu_training_frees_its_clustering_index(cloned_to_cpu, monkeypatch, tmp_path):
    """Assigning ``clustering_index`` hands it to C++, which never frees it: it is
    taken back after the k-means ran through it."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2000, 32)).astype(np.float32)
    index = index_kinds.new_index(32, "IVF16,Flat")
    store = SimpleNamespace(
        segment_ids=lambda: np.arange(1, 2001),
        embeddings=lambda ids: iter([(ids, data[np.asarray(ids) - 1])]),
    )
    monkeypatch.setattr(faiss_gpu, "wanted", lambda device: device == "cuda")
    vectors._train_if_needed(index, store, "cuda")
    helper = cloned_to_cpu[-1].copy
    assert index.is_trained and helper.ntotal == 16  # the k-means ran on it: its centroids are left in it
    assert helper.metric_type == faiss.METRIC_INNER_PRODUCT  # the IVF's own (an L2 helper trained other centroids)
    assert faiss.extract_index_ivf(index).clustering_index is None
    assert helper.thisown  # Python's again, freed with its last reference


def test_a_gpu_that_fails_the_k_means_hands_it_to_the_cpu(monkeypatch, caplog):
    """Any RuntimeError of the GPU's training (out of memory beside SAM) was reported as
    "N vectors are not enough" and stopped the run; it now trains on the CPU, said once,
    with the centroids the CPU alone gives."""

    def no_memory(*args, **kwargs):
        raise RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory: out of memory")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", no_memory, raising=False)
    monkeypatch.setattr(faiss_gpu, "resources", lambda: None)
    monkeypatch.setattr(faiss_gpu, "wanted", lambda device: device == "cuda")
    data = np.random.default_rng(4).standard_normal((2000, 32)).astype(np.float32)
    store = SimpleNamespace(
        segment_ids=lambda: np.arange(1, 2001),
        embeddings=lambda ids: iter([(ids, data[np.asarray(ids) - 1])]),
    )
    on_gpu, on_cpu = index_kinds.new_index(32, "IVF16,Flat"), index_kinds.new_index(32, "IVF16,Flat")
    with caplog.at_level("WARNING", logger=vectors.__name__):
        vectors._train_if_needed(on_gpu, store, "cuda")
    vectors._train_if_needed(on_cpu, store, "cpu")
    assert (
        on_gpu.is_trained
        and "failed on the GPU (" in caplog.text
        and "out of memory): training on the CPU" in caplog.text
    )
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 16) for i in (on_gpu, on_cpu)]
    np.testing.assert_array_equal(*centroids)


def test_an_opq_rotation_is_given_back_its_own_codebooks_after_training(capfd):
    """OPQ's rotation is lent a PQ of ours for its k-means (FAISS's threshold printed 800
    lines otherwise): afterwards, trained or refused, it points at none."""
    data = np.random.default_rng(5).standard_normal((1024, 32)).astype(np.float32)
    for n in (1024, 100):  # trained; refused (fewer vectors than a codebook's clusters)
        store = SimpleNamespace(
            segment_ids=lambda n=n: np.arange(1, n + 1),
            embeddings=lambda ids: iter([(ids, data[np.asarray(ids) - 1])]),
            folder="db",
            url=None,
        )
        index = index_kinds.new_index(32, "OPQ4,IVF4,PQ4")
        if n < 256:
            with pytest.raises(ValueError, match="trains 256 clusters"):
                vectors._train_if_needed(index, store, "cpu")
        else:
            vectors._train_if_needed(index, store, "cpu")
            assert index.is_trained and "WARNING clustering" not in capfd.readouterr().err
        assert index_kinds.opq_matrices(index)[0].pq is None
