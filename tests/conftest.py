"""Test setup: never touch the network or the user's caches."""

import os
import tempfile

# Before anything imports huggingface_hub: hub calls fail fast instead of retrying,
# and the caches are empty, so "weights are missing" is what every real preset sees.
_home = tempfile.mkdtemp(prefix="usesearch-test-home-")
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
    from training.data import load_samples
    from training.synthetic import write_dataset
    from training.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("trained")
    train_dir, test_dir = write_dataset(root / "train", 96, seed=1), write_dataset(root / "test", 24, seed=2)
    cfg = TrainConfig(preset="tiny", batch_images=8, crop=128, max_steps=300, lr=2e-3, checkpoint_every=10**9)
    Trainer(load_samples([train_dir]), root / "run", cfg).run()
    return root / "run" / "head", test_dir
