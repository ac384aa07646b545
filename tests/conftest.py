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
