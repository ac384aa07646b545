"""Every entry of the two registries works, timm-style: each masker of ``MASKERS``
builds its tiny, offline form and proposes masks on a real photo (or is skipped when
the optional module it needs is not installed), and refuses SAM settings it does not
take; each curation source of ``SOURCES`` reads a tiny fixture."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import usesearch
from usesearch.curation.sources import SOURCES, read_source
from usesearch.errors import UsesearchError
from usesearch.masks.registry import MASKERS, build_masker
from usesearch.masks.settings import SAM_SETTINGS, SamSettings

# SAM's thresholds off: the tiny preset's random-weight models predict no good mask.
LOW = dict(points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=-10.0)
TRIALS = {"sam": LOW, "sam2": dict(LOW, box_nms_thresh=1.0), "felzenszwalb": {}, "coco": {}}


def needs(module: str) -> None:
    if module:
        pytest.importorskip(module, reason=f"the {module} extra is not installed: pip install -e '.[{module}]'")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.coffee()[::4, ::4])


def coco_masks(folder: Path, photo: np.ndarray) -> str:
    """A COCO annotations JSON with one polygon on ``coffee.png``."""
    h, w = photo.shape[:2]
    path = folder / "masks.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "coffee.png", "height": h, "width": w}],
                "annotations": [{"id": 1, "image_id": 1, "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]}],
            }
        )
    )
    return str(path)


def test_the_registry_names_one_default_each_way_and_a_trial_for_every_masker():
    assert sorted(TRIALS) == sorted(MASKERS)
    assert [n for n, k in MASKERS.items() if k.default_for == "trained"] == ["sam"]
    assert [n for n, k in MASKERS.items() if k.default_for == "random"] == ["felzenszwalb"]
    assert build_masker(None, usesearch.get_preset("tiny")).name == "felzenszwalb"


@pytest.mark.parametrize("name", list(MASKERS))
def test_every_masker_builds_offline_and_proposes_masks(name, photo, tmp_path):
    kind = MASKERS[name]
    needs(kind.requires)
    options = dict(TRIALS[name], **({"masks_json": coco_masks(tmp_path, photo)} if name == "coco" else {}))
    masker = build_masker(name, usesearch.get_preset("tiny"), "cpu", **options)
    proposals = masker(photo, str(tmp_path / "coffee.png"))
    assert masker.name == name and kind.description and masker.params() is not None
    assert proposals and all(p.mask.shape == photo.shape[:2] and p.area == p.mask.sum() > 0 for p in proposals)


@pytest.mark.parametrize("name", list(MASKERS))
def test_every_masker_refuses_the_sam_settings_it_does_not_take(name):
    kind = MASKERS[name]
    for setting in SAM_SETTINGS:
        if setting in kind.settings:
            continue
        with pytest.raises(
            UsesearchError, match=f"^{SamSettings.flag(setting)} applies to --masker .* only"
        ) as refused:
            build_masker(name, usesearch.get_preset("tiny"), "cpu", **{setting: 1})
        assert "\n" not in str(refused.value) and f"this run uses masker {name}" in str(refused.value)
    if kind.options is not None:
        with pytest.raises(UsesearchError, match=f"the {name} masker has no option nonsense"):
            build_masker(name, usesearch.get_preset("tiny"), "cpu", nonsense=1)


def test_a_masker_setting_is_refused_before_any_model_loads(monkeypatch):
    """`index --preset tiny --points-per-side 4` (tiny's masker is Felzenszwalb) was
    refused once its embedder had loaded: 17 s here, minutes for a real preset's."""
    import usesearch.indexer.pipeline as pipeline
    from usesearch.indexer import IndexOptions

    def loaded(options):
        raise AssertionError("a model loaded before the masker's settings were checked")

    monkeypatch.setattr(pipeline, "load_embedder", loaded)
    with pytest.raises(UsesearchError, match="^--points-per-side applies to --masker .* only"):
        pipeline.load_models(IndexOptions(preset="tiny", masker_options={"points_per_side": 4}))


def test_the_command_line_refuses_a_masker_setting_before_torch_is_imported(files):
    """`segment`/`index --preset tiny --points-per-side 8` (Felzenszwalb takes none) and
    an unknown --masker were refused once torch had loaded (4-5 s): now as the models'
    registry is read, which imports no model library."""
    from tests.helpers import invoke_in_a_fresh_python

    photo, db = str(files / "p.jpg"), str(files / "db")
    commands = [
        ["segment", photo, "--classes", "a,b", "--out", str(files / "o.png"), "--points-per-side", "8"],
        ["index", photo, "--db", db, "--points-per-side", "8"],
        ["index", photo, "--db", db, "--masker", "felzenszwalb", "--pred-iou-thresh", "0.5"],
        ["index", photo, "--db", db, "--masker", "nosuch"],
    ]
    said, heavy = invoke_in_a_fresh_python(*([*c, "--preset", "tiny"] for c in commands))
    assert [code for code, _ in said] == [2, 2, 2, 2] and heavy == [], said
    assert all("applies to --masker sam and sam2 only; this run uses masker felzenszwalb" in s for _, s in said[:3])
    assert "unknown masker 'nosuch'; choose one of sam, sam2, felzenszwalb, coco" in said[3][1]
    assert not (files / "db").exists() and not (files / "o.png").exists()


@pytest.mark.parametrize("name", ["sam", "sam2"])
def test_the_sam_settings_a_masker_takes_are_its_generators_own(name):
    needs(MASKERS[name].requires)
    if name == "sam":
        from usesearch.masks.amg import SamMaskGenerator as generator
    else:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as generator
    assert MASKERS[name].settings <= set(inspect.signature(generator).parameters)


def source_fixture(name: str, root: Path) -> tuple[Path, Path]:
    """(the path ``curate run`` is given, the image folder) of a one-image source."""
    images = root / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()[::4, ::4]).save(images / "7.jpg")  # 75 x 113
    image = {"id": 7, "file_name": "7.jpg", "height": 75, "width": 113}
    documents = {
        "folder": None,
        "coco-captions": {"images": [image], "annotations": [{"image_id": 7, "caption": " A cat. "}]},
        "coco-instances": {
            "categories": [{"id": 1, "name": "cat"}],
            "images": [image],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[10, 10, 30, 10, 30, 30]]}],
        },
        "vg": [{"regions": [{"image_id": 7, "x": 5, "y": 6, "width": 20, "height": 30, "phrase": "a cat's ear"}]}],
    }
    if documents[name] is None:
        return images, images
    (root / "source.json").write_text(json.dumps(documents[name]))
    return root / "source.json", images


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_curation_source_reads_a_tiny_fixture(name, tmp_path):
    source = SOURCES[name]
    path, images = source_fixture(name, tmp_path)
    [item] = read_source(name, path, images)
    assert Path(item.path) == images / "7.jpg" and source.description
    texts = [t.text for t in item.captions] + [t.text for b in item.boxes for t in b.texts]
    texts += [t.text for s in item.segments for t in s.texts]
    texts += [a.category for a in item.annotations.annotations] if item.annotations else []
    assert texts or item.mllm_caption
    assert bool(item.segments or item.annotations) == (not source.prompts_sam)  # given masks need no SAM
    assert (item.mllm_caption or bool(item.captions)) == source.grounded
    if source.annotations:
        with pytest.raises(ValueError, match=f"--input-format {name} needs --images DIR"):
            read_source(name, path)


def test_an_unknown_source_names_the_known_ones():
    with pytest.raises(
        ValueError, match="--input-format 'flickr' is none of folder, coco-captions, coco-instances, vg"
    ):
        read_source("flickr", ".")
