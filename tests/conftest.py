"""Test setup: never touch the network or the user's caches."""

import atexit
import os
import shutil
import signal
import sys
import tempfile

# The README's install skips pip's byte-compiling (`--no-compile`: 80 of its 160 s, for
# torch's ~19k files), so the ~4k modules the suite imports are compiled on first use and
# kept, by this process and the ones it starts (pytest-xdist's workers, CLI subprocesses,
# Ray's workers). Where PYTHONDONTWRITEBYTECODE is set, as on this project's machines,
# each of those processes would compile them again (~10 s a process that imports the models).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# A shell starts a background job (`cmd &`) with SIGINT ignored, and Python then keeps
# it ignored: the Ctrl-C tests, in this process and in those it starts, need Python's own.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Before anything imports huggingface_hub: hub calls fail fast instead of retrying,
# and the caches are empty, so "weights are missing" is what every real preset sees.
# Idempotent: a subprocess a test starts inherits the variables and keeps them.
_home = os.environ.get("USESEARCH_TEST_HOME")
if not _home:  # this process made it (not a worker or subprocess it started): removed when it ends
    _home = tempfile.mkdtemp(prefix="usesearch-test-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)  # (each run left one in /tmp)
_worker = os.environ.get("PYTEST_XDIST_WORKER")  # each of pytest-xdist's workers a home of its own
if _worker and os.path.basename(_home) != _worker:
    _home = os.path.join(_home, _worker)
    os.makedirs(_home, exist_ok=True)
os.environ["USESEARCH_TEST_HOME"] = _home
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_home, "hf")
os.environ["HF_HUB_CACHE"] = os.path.join(_home, "hf", "hub")
os.environ["USESEARCH_HOME"] = os.path.join(_home, "usesearch")
os.environ["XDG_CACHE_HOME"] = os.path.join(_home, "cache")
# pytest-xdist's workers get COLUMNS=80 and LINES=24, which rich's consoles (made at
# import) would fix their width to: a test's own COLUMNS is read when it prints.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
if _worker:
    # Two workers share two cores: one thread each (and in the processes they start)
    # instead of four threads contending for two.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray starts its worker processes (the actors, restarted after each death the Ray tests
# cause, and the read tasks) at nice 15, where they wait behind any busy process of this
# session at nice 0 (the other pytest worker): a Ray test's actor, whose start is seconds
# of imports, waited up to a minute. At nice 0 they share the cores as the tests do.
# Read where each of Ray's processes starts: ``ray_local``'s and a tested CLI's own Ray alike.
os.environ.setdefault("RAY_worker_niceness", "0")
# Inductor's first CPU compile with an empty cache builds a test program for each vector
# ISA the CPU reports (18 of the first graph's 42 s on 2 cores, paid by every fresh
# checkout's suite, as CI's); the suite takes the CPU's word, in its subprocesses too.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The longest test files first, to pytest-xdist's workers (tests/scheduling.py).
pytest_plugins = ["tests.scheduling"]


@pytest.fixture(autouse=True)
def no_work_left_aside():
    """Side streams a test turned on (a GPU's default) stopped after it: an out-of-memory
    error anywhere stops every one in use in the process (``release_work_aside``), so
    one left running would change a later test's answer."""
    yield
    side_stream = sys.modules.get("usesearch.side_stream")
    if side_stream is not None:
        side_stream.release_work_aside()


@pytest.fixture(autouse=True)
def other_processes_idle(monkeypatch):
    """Other processes' share of the cores reads 0 (``machine_load``): the suite's other
    worker keeps a core busy, and a calibration timed beside it would be flagged busy by
    turns. Tests of the measure itself set ``machine_clock`` again."""
    from usesearch import machine_load

    monkeypatch.setattr(machine_load, "machine_clock", lambda: None)


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


@pytest.fixture()
def photos(tmp_path):
    """Two small photos, a cat (113 x 75) and a cup (150 x 100), for curation's tests
    (a module's own ``photos`` fixture overrides this one)."""
    from PIL import Image
    from skimage import data

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()[::4, ::4]).save(images / "cat.png")
    Image.fromarray(data.coffee()[::4, ::4]).save(images / "cup.png")
    return images


@pytest.fixture()
def trained_head(tmp_path):
    """A tiny head whose weights differ from the seeded ones, saved to disk (untrained:
    for what needs a head checkpoint, not scores that mean something)."""
    import torch

    import usesearch

    use = usesearch.create_use("tiny")
    with torch.no_grad():
        use.encoder.alpha.copy_(torch.tensor([0.1, 0.3, 0.6]))
        use.head.proj.weight.mul_(-1)
    path = usesearch.save_head(tmp_path / "ckpt", use.trainable_state_dict(), use.preset, {"step": 7})
    return path, use


@pytest.fixture(scope="session")
def trained_tiny_head(tmp_path_factory):
    """A tiny head trained 300 steps on the synthetic world (~20 s), shared by the tests
    that need a model whose scores mean something. Trained once for the run: pytest-xdist's
    workers share the run's temporary root, and the first to take the lock trains it (as
    pytest-xdist's docs do for session fixtures); the other waits, then reads it."""
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained-tiny-head"
    done = root.with_name(f"{root.name}.done")  # written once trained (a killed worker leaves none)
    with FileLock(f"{root}.lock"):
        if not done.exists():
            from usesearch.training.config import TrainConfig
            from usesearch.training.data import load_samples
            from usesearch.training.synthetic import write_dataset
            from usesearch.training.train import Trainer

            shutil.rmtree(root, ignore_errors=True)  # what a worker killed while training left
            train_dir = write_dataset(root / "train", 96, seed=1)
            write_dataset(root / "test", 24, seed=2)
            cfg = TrainConfig(preset="tiny", batch_images=8, crop=128, max_steps=300, lr=2e-3, checkpoint_every=10**9)
            Trainer(load_samples([train_dir]), root / "run", cfg).run()
            done.touch()
    return root / "run" / "head", root / "test"


@pytest.fixture(scope="session")
def planted_index(trained_tiny_head, tmp_path_factory):
    """A labelled dataset with known errors (``indexer/audit/planted.py``, 60 photos)
    indexed with the trained tiny head, annotations and proposals: (its index folder, the
    ``Planted`` truth). Built once for the run, as ``trained_tiny_head`` is; an audit
    writes into its index, so each test audits a copy of its own (``planted_db``)."""
    import dataclasses
    import json
    import shutil

    from filelock import FileLock

    from usesearch.indexer.audit.planted import Planted, PlantedConfig, write_planted

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "planted-index"
    truth = root.with_name(f"{root.name}.json")  # written once indexed (a killed worker leaves none)
    with FileLock(f"{root}.lock"):
        if not truth.exists():
            import usesearch

            head, _ = trained_tiny_head
            shutil.rmtree(root, ignore_errors=True)
            config = PlantedConfig(photos=60, seed=3)
            planted, _ = write_planted(root / "db", root / "photos", usesearch.load_model(head), config, head)
            fields = {k: sorted(v) if isinstance(v, set) else v for k, v in dataclasses.asdict(planted).items()}
            fields["errors"] = {k: sorted(v) for k, v in planted.errors.items()}
            truth.write_text(json.dumps(fields))
    fields = json.loads(truth.read_text())
    fields = {k: v if k == "class_names" else set(v) for k, v in fields.items() if k != "errors"} | {
        "errors": {k: set(v) for k, v in fields["errors"].items()}
    }
    return root / "db", Planted(**fields)


@pytest.fixture
def planted_db(planted_index, tmp_path):
    """A copy of the planted index of one's own (an audit writes into the folder and catalog)."""
    import shutil

    shutil.copytree(planted_index[0], tmp_path / "db")
    return tmp_path / "db"


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


# -- a tiny SAM whose masks are blobs around each prompt: the mask generator's tests --
@pytest.fixture(scope="module")
def sam():
    """``tests.helpers.blob_sam``: the seeded tiny SAM whose masks are blobs."""
    from tests.helpers import blob_sam

    return blob_sam()


@pytest.fixture(scope="module")
def image():
    from skimage import data

    return np.ascontiguousarray(data.coffee()[::3, ::3])  # 134 x 200: not square, not the model's size


@pytest.fixture(scope="session")
def ray_local():
    """Ray on this machine with two CPU workers, shared by every test that asks in this
    test process (the distributed extra's tests skip themselves where ray is not
    installed). One for the session, not one per module: each start and stop cost ~5 s,
    and the task workers it keeps (hashing, decoding) start once. A run in this process
    joins a Ray already up: a later test of Ray's own start and stop, without this
    fixture, patches ``ray.is_initialized`` (as tests/test_ray_output.py's do)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_for_ray_cases(request):
    """For a test parametrised ``on_ray``: its Ray cases share the module's local Ray
    (``ray_local``), where each run started and stopped its own (~10 s each, a few runs a
    test; that start and stop: tests/test_ray_output.py)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("on_ray"):
        request.getfixturevalue("ray_local")


@pytest.fixture
def files(tmp_path):
    """Files a command line names (its options check that they exist): JSON files, a
    folder, a photo."""
    from PIL import Image

    for name in ("a.json", "p.json", "m.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "i").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "p.jpg")
    return tmp_path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small index, open, and a test client of its web app (a module's: built once each)."""
    from fastapi.testclient import TestClient

    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
    from usesearch.indexer.web import create_app

    root = tmp_path_factory.mktemp("serve")
    photos = write_photos(root / "photos", ("astronaut", "chelsea", "coffee"))
    index_paths([photos], root / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(root / "db")
    client = TestClient(create_app(index), raise_server_exceptions=False)
    yield root, index, client
    index.close()


# -- a small index and a tiny SAM 3 over it: query --refine's tests (test_refine*.py) --
@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths

    root = tmp_path_factory.mktemp("refine")
    index_paths([write_photos(root / "photos")], root / "db", IndexOptions(**OPTS))
    return root / "db"


@pytest.fixture(scope="module")
def index(db):
    from usesearch.indexer import SegmentIndex

    opened = SegmentIndex.open(db)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def refiner(index):
    """One tiny SAM 3 over the top 3 photos, its cache warm after the first test."""
    from usesearch.indexer.refine import RefineOptions, Refiner

    return Refiner(index, RefineOptions(top=3))


# -- a small index of a test's own: test_index_integrity.py's and test_index_answers.py's --
@pytest.fixture()
def small_index(tmp_path):
    """``write_photos``' four photos indexed with ``OPTS``: their folder and the index's."""
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths

    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    return photos, db


# -- sixteen synthetic training samples: test_training_faults.py's and test_training_resume.py's --
@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from usesearch.training.data import load_samples
    from usesearch.training.synthetic import write_dataset

    return load_samples([write_dataset(tmp_path_factory.mktemp("faults") / "train", 16, seed=3)])
