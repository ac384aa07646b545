"""A query by text loads the model's text side alone (``load_text_model``): the same
vectors and fingerprint as the whole model's, with no DINOv2 built and no image tower held."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

import usesearch
from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.models import backbones
from usesearch.models.model import TextModel, USEEmbedder

TEXTS = ["a red apple behind the rabbit", "an astronaut"]


@pytest.mark.parametrize("embedder", ["use", "crop"])
def test_the_text_side_is_the_whole_models(trained_head, embedder):
    head = str(trained_head[0]) if embedder == "use" else None
    whole = usesearch.load_model("tiny", embedder=embedder, head=head, device="cpu")
    text = usesearch.load_text_model("tiny", embedder=embedder, head=head, device="cpu")
    assert isinstance(text, TextModel) and text.fingerprint == whole.fingerprint and text.dim == whole.dim
    assert text.text.model.visual is None  # CLIP's image tower dropped
    np.testing.assert_allclose(text.embed_text(TEXTS), whole.embed_text(TEXTS), atol=1e-6)
    np.testing.assert_allclose(text.embed_classes(["cat", "dog"]), whole.embed_classes(["cat", "dog"]), atol=1e-6)


def test_the_text_side_of_a_checkpoint_given_first_names_its_preset(trained_head):
    text = usesearch.load_text_model(str(trained_head[0]), device="cpu")
    assert text.preset.name == "tiny" and text.fingerprint == usesearch.load_model(str(trained_head[0])).fingerprint


def test_tinys_seeded_head_is_known_only_by_the_whole_model():
    text = usesearch.load_text_model("tiny", device="cpu")
    assert isinstance(text, USEEmbedder) and text.fingerprint == usesearch.load_model("tiny").fingerprint


def test_the_text_side_refuses_what_the_whole_model_refuses(trained_head):
    with pytest.raises(usesearch.UsesearchError, match="unknown embedder 'clip'"):
        usesearch.load_text_model("tiny", embedder="clip")
    with pytest.raises(usesearch.NoTrainedHeadError, match="no trained USE head"):
        usesearch.load_text_model("b16")


@pytest.fixture()
def headed_index(trained_head, tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    index_paths([photos], tmp_path / "db", IndexOptions(**{**OPTS, "head": str(trained_head[0])}))
    return tmp_path / "db"


def _no_dino(*_args, **_kwargs):
    raise AssertionError("DINOv2 built for a text query")


def test_a_text_query_builds_no_dino_and_a_region_search_loads_the_whole_model(headed_index, monkeypatch):
    with SegmentIndex.open(headed_index) as index, monkeypatch.context() as patch:
        patch.setattr(backbones, "build_dino", _no_dino)
        patch.setattr("usesearch.models.factory.build_dino", _no_dino)
        hits = index.query("a cup", 3)
        assert hits and index.models.loaded == {"text"} and isinstance(index.text_model, TextModel)
        expected = index.text_vector("a cup")
    with SegmentIndex.open(headed_index) as index:
        index.query("a cup", 3)
        whole = index.model  # a search by a region needs it: its text side then answers
        assert index.models.loaded == {"whole"} and index.text_model is whole
        np.testing.assert_allclose(index.text_vector("a cup"), expected, atol=1e-6)


def test_a_text_query_on_tinys_seeded_head_holds_the_whole_model_once(tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    with SegmentIndex.open(tmp_path / "db") as index:
        assert index.query("a cup", 2) and index.models.loaded == {"whole"}
        assert index.text_model is index.model


def test_the_server_starts_on_the_text_side(headed_index, monkeypatch):
    from usesearch.indexer.web.app import create_app

    monkeypatch.setattr("usesearch.models.factory.build_dino", _no_dino)
    with SegmentIndex.open(headed_index) as index:
        client = TestClient(create_app(index))
        assert index.models.loaded == {"text"}  # at startup: a mismatch stops it there
        found = client.get("/api/search", params={"q": "a cup", "k": 2})
        assert found.status_code == 200 and len(found.json()["hits"]) == 2


def test_a_text_query_does_not_wait_for_the_whole_model_loading(headed_index, monkeypatch):
    """The server loads the whole model with its first search by a region: meanwhile
    every text query waited for it (seconds on l14-336), though its text side was held."""
    import threading

    import usesearch.models.factory as factory

    loading, go_on = threading.Event(), threading.Event()
    real = factory.load_model

    def slow_load(*args, **kwargs):
        loading.set()
        assert go_on.wait(60)
        return real(*args, **kwargs)

    with SegmentIndex.open(headed_index) as index:
        expected = index.text_vector("a cup")  # the text side, held
        monkeypatch.setattr(factory, "load_model", slow_load)
        region_side = threading.Thread(target=lambda: index.model)
        region_side.start()
        assert loading.wait(60)
        answered: list = []
        query = threading.Thread(target=lambda: answered.append(index.text_vector("a cup")))
        query.start()
        query.join(30)
        answered_while_loading = list(answered)
        go_on.set()
        region_side.join(60)
        query.join(60)
    assert answered_while_loading and np.allclose(answered_while_loading[0], expected)


def test_a_head_checkpoint_holding_a_backbone_weight_is_refused_not_loaded_over_it(trained_head, tmp_path):
    """The whole model loaded it over CLIP's own weight, and its text side, which never
    builds CLIP's image tower, named the checkpoint otherwise: both refuse it now."""
    _, use = trained_head
    frozen = next(k for k in use.state_dict() if k not in use.trainable_state_dict())
    state = {**use.trainable_state_dict(), frozen: use.state_dict()[frozen] + 1}
    path = usesearch.save_head(tmp_path / "odd", state, use.preset)
    with pytest.raises(usesearch.UsesearchError, match=f"does not fit: missing \\[\\], unexpected \\['{frozen}'\\]"):
        usesearch.load_model(str(path))
