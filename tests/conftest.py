"""Test setup: never touch the network or the user's caches."""

import os
import tempfile

# Before anything imports huggingface_hub: hub calls fail fast instead of retrying,
# and the caches are empty, so "weights are missing" is what every real preset sees.
# Idempotent: test modules import helpers from here (as tests.conftest), which runs
# this file a second time; it must not move the caches mid-session.
_home = os.environ.get("USESEARCH_TEST_HOME") or tempfile.mkdtemp(prefix="usesearch-test-home-")
os.environ["USESEARCH_TEST_HOME"] = _home
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_home, "hf")
os.environ["HF_HUB_CACHE"] = os.path.join(_home, "hf", "hub")
os.environ["USESEARCH_HOME"] = os.path.join(_home, "usesearch")
os.environ["XDG_CACHE_HOME"] = os.path.join(_home, "cache")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_use():
    import usesearch

    return usesearch.load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_crop():
    import usesearch

    return usesearch.load_model("tiny", embedder="crop", device="cpu")


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo, small: scikit-image's astronaut at 128x128."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::4, ::4])


@pytest.fixture()
def photo_masks(photo) -> np.ndarray:
    h, w = photo.shape[:2]
    masks = np.zeros((3, h, w), bool)
    masks[0, :40, :40] = True
    masks[1, 50:110, 30:90] = True
    masks[2] = True
    return masks


@pytest.fixture(scope="session")
def trained_tiny_head(tmp_path_factory):
    """A tiny head trained 300 steps on the synthetic world (~30 s), shared by the tests
    that need a model whose scores mean something."""
    from usesearch.training.data import load_samples
    from usesearch.training.synthetic import write_dataset
    from usesearch.training.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("trained")
    train_dir, test_dir = write_dataset(root / "train", 96, seed=1), write_dataset(root / "test", 24, seed=2)
    cfg = TrainConfig(preset="tiny", batch_images=8, crop=128, max_steps=300, lr=2e-3, checkpoint_every=10**9)
    Trainer(load_samples([train_dir]), root / "run", cfg).run()
    return root / "run" / "head", test_dir


# -- shared by the index, serving and export tests --------------------------------------
OPTS = dict(preset="tiny", masker="felzenszwalb", masker_options={"max_masks": 8})


def write_photos(folder, names=("astronaut", "chelsea", "coffee", "rocket")):
    """Small real photos (scikit-image's), every other one in a subfolder ``sub``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sub = folder / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96))
        image.save(sub / f"{name}.png")
    return folder


def segment_table(db, db_url=None):
    """(image, bbox, area, rle) per segment: what an index holds, independent of ids."""
    from usesearch.indexer import SegmentIndex

    ix = SegmentIndex.open(db, db_url=db_url)
    rows = ix.store.rows(ix.store.segment_ids())
    ix.close()
    return sorted((os.path.basename(r.image_path), r.bbox, r.area, r.rle_counts) for r in rows.values())


def assert_consistent(db, db_url=None):
    """The vector file on disk holds exactly the committed segments, each once."""
    import faiss

    from usesearch.indexer import SegmentIndex
    from usesearch.indexer.pipeline import FAISS_FILE
    from usesearch.indexer.vectors import index_ids

    from usesearch.indexer.vectors import shard_files

    ix = SegmentIndex.open(db, db_url=db_url)
    on_disk = np.concatenate([index_ids(faiss.read_index(str(f))) for f in shard_files(db / FAISS_FILE)])
    committed = np.sort(ix.store.segment_ids())
    assert len(np.unique(committed)) == len(committed)
    np.testing.assert_array_equal(np.sort(on_disk), committed)
    ix.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for this test session (tests/postgres.py)."""
    from tests.postgres import Server, bin_dir

    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed here and tests/install-services.sh could not install it (needs root)")
    server = Server().start()
    yield server
    server.remove()


@pytest.fixture()
def pg_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres_server.new_database()


# -- kill -9 tests: run a step in another process, kill it when it is partly done --------
def run_python(code: str, *args, **popen):
    """``python -c code args...`` in another process, importing this checkout."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env={**os.environ, "PYTHONPATH": os.getcwd()}, **popen)


def sqlite_count(db_file, sql: str):
    """One count from an index's SQLite file while another process writes it (None
    while it cannot be read)."""
    import sqlite3

    try:
        with sqlite3.connect(db_file, timeout=5) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return None


def kill_when(proc, probe, reached, start, timeout: float = 120, every: float = 0.05):
    """Poll ``probe()`` while ``proc`` runs; once ``reached(value)``, kill it with
    SIGKILL. Returns the last value read (``start`` until one is)."""
    import signal
    import time

    deadline, value = time.time() + timeout, start
    while time.time() < deadline and proc.poll() is None and not reached(value):
        time.sleep(every)
        read = probe()
        value = value if read is None else read
    assert proc.poll() is None, "the process finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return value
