"""The `curate run` and `curate show` commands through what real sources hold: what a run refuses
before any model loads, a run cut short, photos past the size limits or with names that are not
UTF-8, and a picture that never overwrites the photo or a file of the user's."""

import json
import re

import pytest
from PIL import Image
from skimage import data

import usesearch
from tests.helpers import curated_segment, one_annotation_coco
from usesearch.curation.pipeline import curate
from usesearch.curation.records import ImageItem


def test_a_failed_photo_whose_name_is_not_utf8_is_said_with_the_byte_spelt_out(tmp_path):
    """`curate run`'s failure line wrote the name's raw byte to the terminal (index and
    failures spelt it `\\xff`); every console line that names a file does now."""
    import os

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.io.files import one_line

    folder = os.fsencode(str(tmp_path / "photos"))
    os.makedirs(folder)
    with open(folder + b"/bad\xff.jpg", "wb") as f:
        f.write(b"junk")
    Image.fromarray(data.astronaut()[:64, :64]).save(tmp_path / "photos" / "ok.png")
    args = ["curate", "run", str(tmp_path / "photos"), "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"]
    result = CliRunner().invoke(app, [*args, "--captioner", "tiny", "--grounder", "tiny"])
    assert "failed: " + str(tmp_path / "photos" / "bad\\xff.jpg") in result.output, result.output
    assert "\udcff" not in result.output
    assert one_line("caf\u00e9\tb") == "caf\u00e9\\tb" and one_line("a\ud800b") == "a\\ud800b"  # other text kept


def test_curate_run_refuses_what_its_source_would_not_use_and_an_empty_folder(tmp_path, photos):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    (tmp_path / "empty").mkdir()
    (tmp_path / "c.json").write_text("{}")
    ds = ["--dataset-dir", str(tmp_path / "ds")]
    cases = [
        (["curate", "run", str(tmp_path / "empty"), *ds, "--captioner", "tiny"], "found no photo to curate there"),
        (["curate", "run", str(tmp_path / "c.json"), *ds], "is a file and --input-format folder reads a folder"),
        (  # (taken silently: a folder's photos are its own)
            ["curate", "run", str(photos), *ds, "--captioner", "tiny", "--images", str(photos)],
            f"--input-format folder curates the photos under {photos}: --images names an annotation file's photos",
        ),
        (  # ("error: photos: Is a directory")
            ["curate", "run", str(photos), "--input-format", "vg", "--images", str(photos), *ds],
            f"{photos} is a folder and --input-format vg reads its annotation file (",
        ),
        (
            [
                "curate",
                "run",
                str(tmp_path / "c.json"),
                *"--input-format coco-instances --images".split(),
                str(photos),
                *ds,
            ]
            + ["--pred-iou-thresh", "0.1", "--grounder", "tiny"],
            "--pred-iou-thresh, --grounder would do nothing",
        ),
        (  # the photo folder itself: accepted, it then counted as a dataset (a run in it refused)
            ["curate", "run", str(photos), "--dataset-dir", str(photos), "--captioner", "tiny", "--grounder", "tiny"],
            "holds files that are not a curated dataset's (",
        ),
    ]
    for args, why in cases:
        result = CliRunner().invoke(app, [*args, "--preset", "tiny"])
        assert result.exit_code == 2 and why in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "ds").exists()  # no refused run left a folder that looks like a dataset
    from usesearch.curation.dataset import check_dataset_folder

    (tmp_path / "cut" / "shards").mkdir(parents=True)  # a first run cut short before its manifest...
    (tmp_path / "cut" / "shards" / "shard-00000.jsonl").write_text("")
    (tmp_path / "cut" / "README.md").write_text("notes")  # ...and a file of the user's beside it
    check_dataset_folder(tmp_path / "cut")  # resumed, not refused as someone's folder


def test_curate_run_prompts_sam_vit_h_by_default_and_refuses_it_missing_before_other_models_load(
    tmp_path, photos, monkeypatch
):
    """§4.1 curates with SAM ViT-H: with no --preset, curate asks for the paper's
    preset's SAM (index's default preset has ViT-B), and missing weights are said in
    one line before the grounder or captioner loads."""
    from typer.testing import CliRunner

    import usesearch.cli.curate as curate_cli
    from usesearch.cli.app import app

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path / "no-weights"))
    loaded = []
    monkeypatch.setattr(curate_cli, "_grounder", lambda *a: loaded.append("grounder"))
    monkeypatch.setattr(curate_cli, "_captioner", lambda *a: loaded.append("captioner"))
    args = ["curate", "run", str(photos), "--dataset-dir", str(tmp_path / "ds"), "--captioner", "tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "SAM vit_h" in result.output and "l14-336" in result.output, result.output
    assert loaded == []


def test_curate_show_finds_a_photo_by_the_end_of_its_path_and_refuses_an_ambiguous_name(tmp_path, photos):
    from usesearch.curation.show import find_record

    (photos / "b").mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(photos / "b" / "cat.png")  # another photo, same name
    item = lambda path, text: ImageItem(path=str(path), segments=[curated_segment((75, 113), text)])  # noqa: E731
    curate([item(photos / "cat.png", "a cat")], tmp_path / "ds", source="one")
    curate([item(photos / "cat.png", "a tabby")], tmp_path / "ds", source="two")
    curate([ImageItem(path=str(photos / "b" / "cat.png"))], tmp_path / "ds", source="one")
    with pytest.raises(usesearch.UsesearchError, match="'cat.png' names 2 photos: .*give more of its path"):
        find_record(tmp_path / "ds", "cat.png")
    both = find_record(tmp_path / "ds", "images/cat.png")  # the end of a path; both sources' segments
    assert sorted(t["text"] for s in both["segments"] for t in s["texts"]) == ["a cat", "a tabby"]
    assert find_record(tmp_path / "ds", "b/cat.png")["segments"] == []
    # A photo curated again after it changed: its path named two records no path could tell apart.
    first = find_record(tmp_path / "ds", "b/cat.png")["sha256"]
    Image.fromarray(data.camera()[::4, ::4]).save(photos / "b" / "cat.png")
    curate([item(photos / "b" / "cat.png", "a camera")], tmp_path / "ds", source="one")
    newest = find_record(tmp_path / "ds", str(photos / "b" / "cat.png"))
    assert newest["sha256"] != first and [t["text"] for s in newest["segments"] for t in s["texts"]] == ["a camera"]
    assert find_record(tmp_path / "ds", first)["segments"] == []  # (the older one, by its sha256)
    Image.fromarray(data.astronaut()[::4, ::4]).save(photos / "b" / "cat.png")  # put back: the one training reads
    assert find_record(tmp_path / "ds", str(photos / "b" / "cat.png"))["sha256"] == first
    # A file on disk that no run curated is refused by the name given, not by its sha256.
    Image.fromarray(data.coffee()[::8, ::8]).save(tmp_path / "never.png")
    never = str(tmp_path / "never.png")
    with pytest.raises(usesearch.UsesearchError, match=f"^'{re.escape(never)}' is not in the dataset at "):
        find_record(tmp_path / "ds", never)


def test_curate_run_interrupted_says_what_is_kept_and_asks_for_captions_before_models(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import usesearch.cli.curate as curate_cli
    import usesearch.curation.pipeline as pipeline
    from tests.helpers import write_photos
    from tests.test_coco_index import write_coco
    from usesearch.cli.app import app

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    write_coco(tmp_path / "inst.json", photos, ["coffee.png", "sub/chelsea.png"], 1)
    real = pipeline.curate

    def cut_after_one(items, *args, **kw):
        def one_then_ctrl_c():
            yield next(iter(items))
            raise KeyboardInterrupt

        return real(one_then_ctrl_c(), *args, **kw)

    monkeypatch.setattr(pipeline, "curate", cut_after_one)
    args = ["curate", "run", str(tmp_path / "inst.json"), "--input-format", "coco-instances", "--images", str(photos)]
    result = CliRunner().invoke(app, [*args, "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny", "--json"])
    assert result.exit_code == 130, result.output
    assert "interrupted; finished work is kept: 1 image curated" in result.stderr
    assert json.loads(result.stdout)["interrupted"] is True and json.loads(result.stdout)["done"] == 1
    monkeypatch.setattr(curate_cli, "_grounder", lambda *a: pytest.fail("the grounder loaded"))
    no_captioner = CliRunner().invoke(app, ["curate", "run", str(photos), "--dataset-dir", str(tmp_path / "d2")])
    assert no_captioner.exit_code == 2 and "pass --captioner" in no_captioner.output, no_captioner.output


def test_curate_show_never_writes_over_the_photo_and_refuses_a_photo_replaced_since(tmp_path, photos, monkeypatch):
    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.io.atomic import save_picture

    save_picture(Image.open(photos / "cat.png"), photos / "cat.png")  # usesearch's own (else refused as a photo)
    # (curate refuses such a picture now: a dataset curated before it did holds it)
    monkeypatch.setattr("usesearch.curation.pipeline.refuse_own_picture", lambda *a: None)
    curate([ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])], tmp_path / "ds")
    before = (photos / "cat.png").read_bytes()
    show = ["curate", "show", str(tmp_path / "ds"), "cat.png", "--out"]
    over = CliRunner().invoke(app, [*show, str(photos / "cat.png")])
    assert over.exit_code != 0 and "is the photo input: it would be overwritten" in over.output, over.output
    assert (photos / "cat.png").read_bytes() == before
    assert CliRunner().invoke(app, [*show, str(tmp_path / "notes.txt")]).exit_code == 2  # not a picture name
    assert CliRunner().invoke(app, [*show, str(tmp_path / "look.png")]).exit_code == 0
    monkeypatch.chdir(tmp_path)  # the default picture is written once, then never replaced unnamed
    assert CliRunner().invoke(app, show[:-1]).exit_code == 0 and (tmp_path / "curated.png").is_file()
    again = CliRunner().invoke(app, show[:-1])
    assert again.exit_code == 2 and "curated.png exists here: `--out curated.png` replaces it" in again.output
    assert CliRunner().invoke(app, [*show, "curated.png"]).exit_code == 0  # named: its own picture replaced
    (tmp_path / "curated.png").write_bytes(b"the user's")
    again = CliRunner().invoke(app, show[:-1])
    assert again.exit_code == 2 and "curated.png exists here: name another file" in again.output
    assert CliRunner().invoke(app, [*show, "curated.png"]).exit_code == 2  # named, but not usesearch's: kept
    assert (tmp_path / "curated.png").read_bytes() == b"the user's"
    Image.fromarray(data.astronaut()[:75, :113]).save(photos / "cat.png")  # same size, other pixels
    replaced = CliRunner().invoke(app, [*show, str(tmp_path / "look2.png")])
    assert replaced.exit_code != 0 and "has changed since it was curated" in replaced.output, replaced.output
    assert not (tmp_path / "look2.png").exists()


def test_a_photo_past_the_pixel_limit_fails_said_with_the_options_and_a_raised_run_curates_it(tmp_path, photos):
    """`curate run` read photos at the defaults alone: a scan archive indexed with
    --max-pixels raised could not be curated (nor trained on)."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    args = ["curate", "run", str(photos), "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"]
    args += ["--captioner", "tiny", "--grounder", "tiny", "--json"]
    refused = CliRunner().invoke(app, [*args, "--max-pixels", "9k"])  # the cup's 15,000 pixels, not the cat's 8,475
    report = json.loads(refused.stdout)
    assert refused.exit_code == 0 and (report["done"], report["failed"]) == (1, 1), refused.output
    assert "1 photo(s) refused for their size: --max-pixels and --max-bytes raise" in refused.stderr
    raised = CliRunner().invoke(app, [*args, "--max-pixels", "20k"])
    assert raised.exit_code == 0 and json.loads(raised.stdout)["done"] == 1, raised.output  # the cup, tried again


def test_curate_show_draws_a_photo_curated_past_the_default_limits(tmp_path, photos, monkeypatch):
    """A scan `curate run --max-pixels` let in could not be shown: `curate show` read it
    at the default limit."""
    from usesearch.curation.show import find_record, render
    from usesearch.io import files

    curate([ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])], tmp_path / "ds")
    monkeypatch.setattr(files, "DEFAULT_MAX_PIXELS", 1_000)  # the cat's 8,475 pixels: past the default here
    out = render(find_record(tmp_path / "ds", "cat.png"), tmp_path / "look.png")
    assert Image.open(out).size[0] >= 113


@pytest.mark.parametrize("categories", [[], [{"id": 99, "name": "other"}]])
def test_a_coco_file_with_no_annotation_to_curate_is_refused_before_anything_is_made(tmp_path, categories):
    """An empty ``categories`` list curated each photo with no pair and exited 0; the
    file then fixed, the folder refused it as other annotations of the same photos."""
    from typer.testing import CliRunner

    from tests.helpers import write_photos
    from tests.test_coco_index import write_coco
    from usesearch.cli.app import app

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    write_coco(tmp_path / "inst.json", photos, ["coffee.png", "sub/chelsea.png"], 1, categories=categories)
    args = ["curate", "run", str(tmp_path / "inst.json"), "--input-format", "coco-instances", "--images", str(photos)]
    result = CliRunner().invoke(app, [*args, "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    why = "its categories list is empty" if not categories else "4 fault(s) in it, the first: "
    assert f"inst.json has no annotation to curate ({why}" in result.output, result.output
    assert not (tmp_path / "ds").exists()


def test_an_unknown_input_format_is_said_with_its_option(tmp_path):
    """It said "unknown source 'bogus'": the option's name is --input-format."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.curation.sources import SOURCES

    (tmp_path / "photos").mkdir()
    args = ["curate", "run", str(tmp_path / "photos"), "--input-format", "bogus", "--dataset-dir", str(tmp_path / "ds")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and f"--input-format 'bogus' is none of {', '.join(SOURCES)}" in result.output


def test_curate_show_writes_labels_apart_on_a_small_photo(tmp_path, photos, monkeypatch):
    """Three segments from one corner of a 113-px photo: their labels were written over
    each other, and over most of the photo."""
    import itertools

    import numpy as np
    from PIL import ImageDraw

    from usesearch.curation.records import Segment, TextRef
    from usesearch.curation.show import find_record, render
    from usesearch.masks import rle

    def corner(side, text):
        mask = np.zeros((75, 113), bool)
        mask[5:side, 5:side] = True
        encoded = rle.encode(mask)
        return Segment(encoded, tuple(rle.bbox(encoded)), rle.area(encoded), [TextRef(text, "vg", "region")])

    segments = [corner(20, "a whisker"), corner(40, "the left ear"), corner(70, "a tabby cat's head")]
    curate([ImageItem(path=str(photos / "cat.png"), segments=segments)], tmp_path / "ds")
    boxes = []
    write = ImageDraw.ImageDraw.text

    def text(self, xy, words, **kw):
        boxes.append(self.textbbox(xy, words, font=kw.get("font"), stroke_width=kw.get("stroke_width", 0)))
        return write(self, xy, words, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    out = render(find_record(tmp_path / "ds", "cat.png"), tmp_path / "look.png")
    size = Image.open(out).size
    assert size == (565, 375)  # drawn 5x: the least whole multiple reaching 512
    assert len(boxes) == 3 and all(0 <= b[0] and 0 <= b[1] and b[2] <= size[0] and b[3] <= size[1] for b in boxes)
    pairs = list(itertools.combinations(boxes, 2))
    assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for a, b in pairs)


def test_one_pair_one_segment_and_one_unused_flag_are_said_in_the_singular(tmp_path, photos):
    # It said "1 pairs", "1 segments, 1 texts" and, of one flag, "leave them out".
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    one_annotation_coco(tmp_path / "c.json", "cat.png", (75, 113), "cat", (10, 40))
    run = ["curate", "run", str(tmp_path / "c.json"), "--input-format", "coco-instances", "--images", str(photos)]
    run += ["--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"]
    unused = CliRunner().invoke(app, [*run, "--grounder", "tiny"])
    assert unused.exit_code == 2 and "--grounder would do nothing; leave it out" in unused.output, unused.output
    curated = CliRunner().invoke(app, run)
    assert curated.exit_code == 0 and "1 image curated, 0 skipped, 0 failed: 1 pair, 1 after NMS" in curated.output
    shown = CliRunner().invoke(
        app, ["curate", "show", str(tmp_path / "ds"), "cat.png", "--out", str(tmp_path / "s.png")]
    )
    assert shown.exit_code == 0 and ": 1 segment, 1 text\n" in shown.output, shown.output


def test_a_picture_usesearch_wrote_among_the_photos_is_not_curated(tmp_path):
    """`curate show --out` (or `segment --out`) into the photos' folder: its masks and
    texts drawn on a photo were curated, then trained on; `index` refused it already."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.io.atomic import save_picture

    (tmp_path / "photos").mkdir()
    Image.fromarray(data.astronaut()[:64, :64]).save(tmp_path / "photos" / "ok.png")
    save_picture(Image.fromarray(data.astronaut()[:64, :64]), tmp_path / "photos" / "sheet.png")  # marked
    args = ["curate", "run", str(tmp_path / "photos"), "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"]
    result = CliRunner().invoke(app, [*args, "--captioner", "tiny", "--grounder", "tiny"])
    said = " ".join(result.output.split())
    assert "1 image curated, 0 skipped, 1 failed" in said, said
    assert f"{tmp_path / 'photos' / 'sheet.png'}: ImageReadError: cannot curate" in said and "usesearch wrote" in said
    records = [json.loads(line) for f in (tmp_path / "ds" / "shards").glob("*.jsonl") for line in f.open()]
    assert [r["path"] for r in records] == [str(tmp_path / "photos" / "ok.png")]
