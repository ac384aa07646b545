"""Python API and CLI edges: mask values and layouts, empty images, memory-bounded
mask pooling against the implementation it replaced, the bounded Felzenszwalb
masker against the one it replaced, real-weight defaults, 16-bit label maps and
head ensembles."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.masks.maskers import FelzenszwalbMasker
from usesearch.masks.proposals import stack_masks, to_proposals
from usesearch.models.head import _axis_overlap, cell_coverage
from usesearch.tasks.semseg import class_probabilities, pixel_labels, read_label_map, save_label_map

runner = CliRunner()


# -- 12. masks and images given to the Python API ------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, -1.0, 0.5, 2.0])
def test_masks_that_are_not_bool_or_0_1_are_refused(tiny_use, photo, bad):
    masks = np.zeros((1, *photo.shape[:2]), np.float32)
    masks[0, :10, :10] = 1
    masks[0, 20, 20] = bad
    with pytest.raises(ValueError, match="bool or 0/1"):
        tiny_use.embed_segments(photo, masks)


def test_the_models_bad_arguments_are_usesearch_errors_as_python_would_type_them(tiny_use, photo):
    """Masks and texts the models cannot take raised bare ValueError and TypeError: a
    service catching UsesearchError missed them. BadArgumentError is all three."""
    from usesearch.errors import BadArgumentError

    empty = np.zeros((1, *photo.shape[:2]), bool)
    for call, said in (
        (lambda: tiny_use.embed_segments(photo, empty), "every segment needs at least one pixel"),
        (lambda: tiny_use.embed_segments(photo, empty[:, :10]), "like the image"),
        (lambda: tiny_use.embed_text("a cat"), "a list of strings, not a single string"),
        (lambda: tiny_use.embed_text([""]), "empty text"),
        (lambda: tiny_use.embed_segments(photo.astype(np.float32), empty), "expected a uint8 image"),
        # Masks as None, a file's name, an array of objects: torch's TypeError of a NumPy object.
        (lambda: tiny_use.embed_segments(photo, None), "masks is an array of .N, H, W. masks.* got NoneType"),
        (lambda: tiny_use.embed_segments(photo, "mask.png"), "masks is an array .* got str"),
        (lambda: tiny_use.embed_segments(photo, np.array([empty[0], None], object)), "got an array of objects"),
        # None, an array of texts, a generator (the checks used it up: "need at least one array")
        (lambda: tiny_use.embed_text(None), "a list of strings; got NoneType"),
        (lambda: tiny_use.embed_text(np.array(["a", "b"])), "a list of strings; got ndarray"),
        (lambda: tiny_use.embed_text(t for t in ["a", "b"]), "a list of strings; got generator"),
        # A template as a string was split into characters; one without {} gave every text one vector.
        (lambda: tiny_use.embed_text(["cat"], templates="a photo of {}"), "templates is a non-empty list"),
        (lambda: tiny_use.embed_text(["cat"], templates=[]), "templates is a non-empty list"),
        (lambda: tiny_use.embed_text(["cat"], templates=["a photo"]), "template 'a photo' must hold the text's"),
    ):
        with pytest.raises(BadArgumentError, match=said) as caught:
            call()
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


def test_0_1_masks_and_flipped_arrays_embed_like_bool_masks(tiny_use, photo, photo_masks):
    expected = tiny_use.embed_segments(photo, photo_masks)
    np.testing.assert_allclose(tiny_use.embed_segments(photo, photo_masks.astype(np.uint8)), expected, atol=1e-6)
    flipped_photo, flipped_masks = photo[:, ::-1], photo_masks[:, :, ::-1]  # negative strides
    got = tiny_use.embed_segments(flipped_photo, flipped_masks)
    np.testing.assert_allclose(got, tiny_use.embed_segments(flipped_photo.copy(), flipped_masks.copy()), atol=1e-6)


def test_a_photo_gives_the_same_pixels_as_a_file_a_pil_image_or_an_array(tmp_path):
    """A 16-bit PIL image was clipped at 255 (the file read was scaled), and an RGBA array
    lost its alpha (a PIL RGBA image was composited on white): the same photo embedded
    otherwise, and a region of it did not find its own segment first."""
    from skimage import data

    from usesearch.io.images import read_image, to_rgb_array

    deep = data.camera().astype(np.uint16) * 257  # 16-bit greyscale
    Image.fromarray(deep).save(tmp_path / "deep.png")
    read = read_image(tmp_path / "deep.png")
    assert read.max() > 200 and (read == 255).mean() < 0.05  # scaled, not clipped
    np.testing.assert_array_equal(to_rgb_array(Image.open(tmp_path / "deep.png")), read)
    np.testing.assert_array_equal(to_rgb_array(deep), read)  # the array itself ("expected a uint8 image")
    np.testing.assert_array_equal(to_rgb_array(data.camera()[..., None]), to_rgb_array(data.camera()))  # HxWx1
    # From the bits the pixels use: a 12-bit scan was read nearly black (>> 8: at most 15),
    # and one pixel of 256 in 8-bit data so stored blacked out the whole photo.
    twelve = to_rgb_array(Image.fromarray(data.camera().astype(np.uint16) * 16))
    np.testing.assert_array_equal(twelve[..., 0], data.camera())
    low = data.camera().astype(np.uint16)
    low[0, 0] = 256
    assert to_rgb_array(Image.fromarray(low))[1:, 1:, 0].mean() == pytest.approx(
        data.camera()[1:, 1:].mean() / 2, abs=1
    )
    wide = to_rgb_array(Image.fromarray(data.camera().astype(np.int32) * 1000, "I"))  # past 16 bits: no wrap
    assert np.corrcoef(wide[..., 0].ravel(), data.camera().ravel())[0, 1] > 0.99
    assert to_rgb_array(Image.fromarray(data.camera().astype(np.int32) - 128, "I"))[data.camera() < 128].max() == 0
    rgba = np.dstack([data.astronaut(), np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "layer.png")
    composited = read_image(tmp_path / "layer.png")
    assert composited[:, 0].min() == 255  # transparent on the left: white
    np.testing.assert_array_equal(to_rgb_array(rgba), composited)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(rgba, "RGBA")), composited)


def test_a_float_pil_image_is_refused_as_a_float_array_is(tiny_use, photo, photo_masks):
    """PIL's convert clipped mode F: 0..1 pixels became an all but black photo, embedded without a word."""
    grey = Image.fromarray(photo[..., 0].astype(np.float32) / 255)
    with pytest.raises(ValueError, match="got a float image \\(PIL mode F\\)"):
        tiny_use.embed_segments(grey, photo_masks)


def test_a_photo_with_damaged_exif_is_read_without_pillows_warnings(tmp_path):
    """Each printed Pillow's own source lines and no file name: a wall of them over an archive."""
    import io
    import struct
    import subprocess
    import sys

    ifd = struct.pack("<HHII", 0x010E, 2, 1000, 38) + struct.pack("<HHII", 0x0112, 3, 1, 6)  # a tag past the end
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 2) + ifd + struct.pack("<I", 0)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, "JPEG", exif=exif)
    (tmp_path / "bad-exif.jpg").write_bytes(buf.getvalue())
    read = "from usesearch.io.images import read_image; import sys; print(read_image(sys.argv[1]).shape)"
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", read, str(tmp_path / "bad-exif.jpg")], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "(30, 20, 3)" and done.stderr == "", done.stderr


def test_empty_image_is_a_clear_error(tiny_use):
    with pytest.raises(ValueError, match="image is empty"):
        tiny_use.embed_segments(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0, 0), bool))
    with pytest.raises(ValueError, match="image is empty"):
        tiny_use.embed_segments(Image.new("RGB", (0, 0)), np.zeros((0, 0, 0), bool))


# -- 4. memory-bounded pooling weights and masker, same results -------------------------------
def reference_coverage(masks, grid_hw, cell_hw):
    """The implementation before memory bounding: the whole stack to float at once."""
    masks = torch.as_tensor(masks)
    rows = _axis_overlap(masks.shape[1], grid_hw[0], cell_hw[0])
    cols = _axis_overlap(masks.shape[2], grid_hw[1], cell_hw[1])
    return torch.einsum("ih,nhw,jw->nij", rows, masks.float(), cols).flatten(1) / (cell_hw[0] * cell_hw[1])


@pytest.mark.parametrize("block_elements", [1 << 24, 5000, 37])  # whole masks, bands of rows, single rows
def test_bounded_cell_coverage_equals_the_whole_stack_version(block_elements):
    rng = np.random.default_rng(0)
    masks = rng.random((7, 53, 71)) < 0.3
    masks[:, 0, 0] = True
    expected = reference_coverage(masks, (6, 6), (71 / 6, 71 / 6))
    got = cell_coverage(masks, (6, 6), (71 / 6, 71 / 6), block_elements=block_elements)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def reference_felzenszwalb(rgb, scales=(100.0, 400.0), min_area_frac=0.002, max_masks=64):
    """The masker before memory bounding: every candidate mask at full size, then sort."""
    from skimage.segmentation import felzenszwalb

    h, w = rgb.shape[:2]
    min_area = max(16, int(min_area_frac * h * w))
    masks = []
    for scale in scales:
        labels = felzenszwalb(rgb, scale=scale, sigma=0.8, min_size=min_area)
        counts = np.bincount(labels.ravel())
        masks.extend(labels == label for label in np.flatnonzero(counts >= min_area))
    masks.sort(key=lambda m: -int(m.sum()))
    return np.stack(masks[:max_masks])


def test_felzenszwalb_masker_equals_the_version_it_replaced(photo):
    for max_masks in (5, 64):
        proposals = FelzenszwalbMasker(max_masks=max_masks)(photo)
        np.testing.assert_array_equal(
            stack_masks(proposals, photo.shape[:2]), reference_felzenszwalb(photo, max_masks=max_masks)
        )


def test_stack_masks_reuses_the_proposals_stack():
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:5, 2:5] = True
    proposals = to_proposals(masks)
    assert stack_masks(proposals, (8, 8)) is masks
    separate = [p for p in to_proposals(masks.copy())][::-1]  # not rows of one stack in order: copied
    assert stack_masks(separate, (8, 8)) is not masks


# -- 15. the default preset is the real one --------------------------------------------------------
def test_commands_default_to_real_weights_and_say_how_to_get_them(tmp_path, photo):
    image = tmp_path / "a.png"
    Image.fromarray(photo).save(image)
    for args in (
        ["index", str(image), "--db", str(tmp_path / "db")],
        ["embed", str(image), "a cat"],
        ["segment", str(image), "--classes", "a,b", "--out", str(tmp_path / "l.png")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        line = result.output.strip()
        assert "\n" not in line and "b16" in line and "usesearch models pull b16" in line and "--preset tiny" in line, (
            line
        )


# -- 16. paths relative to the indexed folder ---------------------------------------------------------
def test_query_table_shows_paths_relative_to_the_indexed_folder(tmp_path):
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths

    photos = write_photos(tmp_path / "deeply" / "nested" / "archive" / "photos")
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    result = runner.invoke(app, ["query", "a cat", "--db", str(tmp_path / "db"), "-k", "4"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    table = result.output.split("paths under")[0]
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert len(rows) == 4  # one line per hit: nothing wrapped
    assert all(".png" in row and str(tmp_path) not in row for row in rows)


# -- 17. 16-bit label maps ---------------------------------------------------------------------------------
def test_more_than_255_classes_give_a_16_bit_label_map_that_round_trips(tmp_path):
    masks = np.zeros((2, 4, 5), bool)
    masks[0, :2] = True
    masks[1, 2:, :3] = True
    probs = np.zeros((2, 847))
    probs[0, 300], probs[1, 846] = 1.0, 1.0
    labels = pixel_labels(masks, probs)
    assert labels.dtype == np.uint16 and labels[0, 0] == 300 and labels[3, 0] == 846 and labels[3, 4] == 65535
    save_label_map(labels, tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), labels.astype(np.int64))
    assert pixel_labels(masks, np.eye(2, 150)[[0, 1]]).dtype == np.uint8


# -- 20. head ensembles -----------------------------------------------------------------------------------------
def test_ensemble_averages_class_probabilities(tiny_use, tiny_crop, photo, photo_masks):
    names = ["a face", "the sky", "a flag"]
    one, two = (class_probabilities(m, photo, photo_masks, names) for m in (tiny_use, tiny_crop))
    np.testing.assert_allclose(
        class_probabilities([tiny_use, tiny_crop], photo, photo_masks, names), (one + two) / 2, atol=1e-6
    )


def test_segment_takes_head_more_than_once(trained_tiny_head, tmp_path):
    head, test_dir = trained_tiny_head
    image = next((test_dir).rglob("*.png"))
    outputs = []
    for heads in ([head], [head, head]):
        out = tmp_path / f"labels{len(heads)}.png"
        args = ["segment", str(image), "--classes", "circle,square,triangle", "--out", str(out)]
        for h in heads:
            args += ["--head", str(h)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(np.asarray(Image.open(out)))
    np.testing.assert_array_equal(outputs[0], outputs[1])  # the same head twice: the same average
    result = runner.invoke(app, [*args, "--json"])  # per class found: its id and the share of pixels it has
    found = json.loads(result.stdout)["classes"]
    ids, counts = np.unique(outputs[1], return_counts=True)
    assert [(c["id"], c["pixels"]) for c in found] == [(i, n) for i, n in zip(ids.tolist(), counts.tolist()) if i < 3]
    assert found and {c["class"] for c in found} <= {"circle", "square", "triangle"}


def test_a_piped_query_table_keeps_each_path_whole_on_its_row(tmp_path):
    """Piped (no terminal: 80 columns), long paths broke mid-name over several lines,
    which grep and cut could not use."""
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    long = photos / ("a rather long folder name of a summer trip " * 2).strip()
    long.mkdir()
    (photos / "coffee.png").rename(long / "a long photo name from the camera roll.png")
    (photos / "sub" / "chelsea.png").rename(photos / "sub" / ":cat: chelsea.png")  # shown as written, no emoji
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    result = runner.invoke(app, ["query", "a cat", "--db", str(tmp_path / "db"), "-k", "30"], env={"COLUMNS": "80"})
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert result.exit_code == 0 and rows and all(".png" in row for row in rows), result.output
    assert any(f"{long.name}/a long photo name from the camera roll.png" in row for row in rows)
    assert any("sub/:cat: chelsea.png" in row for row in rows) and "\U0001f431" not in result.output


def test_a_text_past_clips_context_is_said_once_a_model(tiny_use, caplog):
    """CLIP reads 77 tokens and drops the rest without a word: a long query was ranked by
    its first words alone. Said once (a curated dataset's captions would say it thousands of times)."""
    import logging

    with caplog.at_level(logging.WARNING, logger="usesearch.models.text"):
        tiny_use.text._said_cut = False  # (the fixture's model is shared: said as for a model just loaded)
        tiny_use.embed_text(["a cat on a mat"])
        assert not caplog.records
        tiny_use.embed_text(["cat " * 100])
        tiny_use.embed_text(["dog " * 100])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("a text of 100 tokens is read as its first "), said


@pytest.mark.parametrize(
    "given, said",
    [
        ({"device": "tpu"}, "device: usesearch runs its models on cpu, cuda or cuda:N, not 'tpu'"),
        ({"faiss_device": "gpu"}, "faiss_device: choose one of auto, cpu, cuda, cuda:N, not 'gpu'"),
        ({"masker": "sma"}, "unknown masker 'sma'; choose one of sam, sam2, felzenszwalb, coco"),
        ({"embedder": "clip"}, "unknown embedder 'clip'; choose 'use' or 'crop'"),
    ],
)
def test_index_options_refuse_a_device_masker_or_embedder_no_run_can_have_as_they_are_made(given, said):
    """`IndexOptions(device="tpu")` or an unknown masker was refused only by `index_paths`,
    once the folder had been checked and the models' libraries imported."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer import IndexOptions

    with pytest.raises(UsesearchError) as refused:
        IndexOptions(preset="tiny", **given)
    assert str(refused.value) == said
    assert (
        IndexOptions(preset="tiny", device="cuda:1", faiss_device="cpu", masker="sam", embedder="crop").masker == "sam"
    )
