"""Head checkpoints round-trip and refuse foreign backbones; missing weights fail clearly."""

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import usesearch
from usesearch.cli.app import app
from usesearch.masks.sam import load_sam
from usesearch.models.weights import sha256_file


def test_checkpoint_is_safetensors_plus_json(trained_head):
    path, _ = trained_head
    assert path.suffix == ".safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "usesearch-head" and meta["preset"] == "tiny" and meta["step"] == 7
    assert meta["backbones"]["clip"]["model_name"] == "usesearch-tiny-clip"


def test_checkpoint_round_trip_reproduces_embeddings(trained_head, tiny_use, photo, photo_masks):
    path, use = trained_head
    loaded = usesearch.load_model(path, device="cpu")  # a checkpoint names its own preset
    via_head = usesearch.load_model("tiny", head=path, device="cpu")
    state, _ = usesearch.load_head(path, use.preset)
    for k, v in use.trainable_state_dict().items():
        torch.testing.assert_close(state[k], v)
    a = loaded.embed_segments(photo, photo_masks)
    np.testing.assert_array_equal(a, via_head.embed_segments(photo, photo_masks))
    assert not np.allclose(a, tiny_use.embed_segments(photo, photo_masks))
    assert loaded.fingerprint == via_head.fingerprint != tiny_use.fingerprint


def test_head_for_other_backbones_is_refused(trained_head):
    path, _ = trained_head
    with pytest.raises(usesearch.CheckpointMismatchError, match="trained for preset 'tiny'.*'b16'"):
        usesearch.load_model("b16", head=path)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["backbones"]["dino"]["overrides"]["depth"] = 12
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(  # (it said "trained for preset 'tiny' (…) and cannot be loaded onto preset 'tiny'")
        usesearch.CheckpointMismatchError, match="names preset 'tiny' in its config but was trained for other backbones"
    ):
        usesearch.load_model(path)


def test_no_trained_head_names_both_ways_forward():
    for preset in ("b16", "l14-336"):
        with pytest.raises(usesearch.NoTrainedHeadError) as err:
            usesearch.load_model(preset, embedder="use")
        assert "--embedder crop" in str(err.value) and "usesearch train" in str(err.value)


@pytest.mark.parametrize("embedder", ["crop"])
def test_missing_weights_fail_fast_with_where_to_put_them(embedder):
    with pytest.raises(usesearch.MissingWeightsError) as err:
        usesearch.load_model("b16", embedder=embedder)
    message = str(err.value)
    home = os.environ["USESEARCH_HOME"]
    assert "ViT-B-16" in message and f"{home}/weights/ViT-B-16-openai.safetensors" in message
    assert "usesearch models pull b16" in message


def test_cli_reports_missing_weights_in_one_line(tmp_path):
    from PIL import Image
    from skimage import data

    image = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()[::8, ::8]).save(image)
    result = CliRunner().invoke(app, ["embed", str(image), "cat", "--preset", "b16", "--embedder", "crop"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "error: clip weights for preset 'b16' are not on this machine" in result.output
    assert "Or try the pipeline with `--preset tiny`" in " ".join(result.output.split())  # (embed takes --preset)


def test_a_search_missing_its_indexs_weights_is_not_sent_to_another_preset(tmp_path, monkeypatch):
    """`query` (no --preset) was told to "try the pipeline with --preset tiny", which it
    refuses as an unknown option: an index is searched with the models it was built with."""
    import usesearch.models.factory as factory
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths
    from usesearch.models.weights import WeightStatus, require

    db = tmp_path / "db"
    index_paths([write_photos(tmp_path / "photos", ("chelsea",))], db, IndexOptions(**OPTS))
    gone = WeightStatus("clip", "ViT-B-16 (openai)", True, None, "/weights/clip.safetensors", "hf.co/x")
    for loader in ("load_model", "load_text_model"):  # (tiny's text side is its whole model's)
        monkeypatch.setattr(factory, loader, lambda preset, **_: require(gone, preset))
    result = CliRunner().invoke(app, ["query", "a cat", "--db", str(db)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "clip weights for preset 'tiny' are not on this machine" in said, said
    assert "This index was built with preset 'tiny': its searches need them." in said
    assert "--preset" not in said and "/weights/clip.safetensors" in said


def test_cli_help_and_models_list():
    runner = CliRunner()
    assert runner.invoke(app, ["--help"]).exit_code == 0
    listing = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    for name in ("l14-336", "b16", "tiny", "missing", "seeded random", "sam_vit_h_4b8939.pth"):
        assert name in listing.output
    rows = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    by_preset = {(r["preset"], r["component"]): r for r in rows}
    assert set(by_preset) >= {(p, c) for p in ("l14-336", "b16", "tiny") for c in ("clip", "dino", "sam")}
    assert all(r["present"] and not r["needed"] for (p, _), r in by_preset.items() if p == "tiny")
    assert not by_preset[("b16", "sam")]["present"] and by_preset[("b16", "sam")]["expected"].endswith(".pth")


def test_models_list_imports_no_model_library(tmp_path):
    """`models list` imported torch and open_clip (~5 s and 900 MB a call on 2 cores)
    to say where weights are; a weights file found is checked without them too."""
    import subprocess
    import sys

    from safetensors.numpy import save_file

    (tmp_path / "weights").mkdir()
    save_file({"w": np.zeros(4, np.float32)}, str(tmp_path / "weights" / "ViT-B-16-openai.safetensors"))
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from usesearch.cli.app import app\n"
        "done = CliRunner().invoke(app, ['models', 'list', '--json'])\n"
        "heavy = [m for m in ('torch', 'segment_anything', 'open_clip', 'timm', 'sam3', 'sam2') if m in sys.modules]\n"
        "print(json.dumps([done.exit_code, heavy, json.loads(done.stdout)]))\n"
    )
    env = {**os.environ, "USESEARCH_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    exit_code, heavy, rows = json.loads(done.stdout)
    assert exit_code == 0 and heavy == []
    clip = {r["preset"]: r for r in rows if r["component"] == "clip"}
    assert clip["b16"]["present"] and clip["b16"]["path"] == str(tmp_path / "weights" / "ViT-B-16-openai.safetensors")
    assert not clip["l14-336"]["present"] and clip["l14-336"]["source"].startswith("hf.co/timm/")
    assert {r["component"] for r in rows} >= {"sam2", "sam3"}


def test_the_clip_repos_known_without_open_clip_are_open_clips():
    """``weights.CLIP_HUB_REPOS`` spares `models list` an open_clip import: it must say
    what open_clip's own table says, for every preset's CLIP weights."""
    import open_clip

    from usesearch.models.presets import PRESETS
    from usesearch.models.weights import CLIP_HUB_REPOS, _clip_repo

    pretrained = [p.clip for p in PRESETS.values() if p.clip.pretrained is not None]
    assert len(pretrained) >= 2 and all((c.model_name, c.pretrained) in CLIP_HUB_REPOS for c in pretrained)
    for (model, tag), repo in CLIP_HUB_REPOS.items():
        assert open_clip.get_pretrained_cfg(model, tag)["hf_hub"].rstrip("/") == repo
    other = dataclasses.replace(pretrained[0], model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert _clip_repo(other) == open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"].rstrip("/")


def test_sam_tiny_is_seeded_and_checkpoints_load_weights_only(tmp_path):
    preset = usesearch.get_preset("tiny")
    a, b = load_sam(preset.sam, "tiny"), load_sam(preset.sam, "tiny")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(a.state_dict(), ckpt)
    loaded = load_sam(preset.sam, "tiny", checkpoint=ckpt)
    torch.testing.assert_close(loaded.mask_decoder.iou_token.weight, a.mask_decoder.iou_token.weight)

    class Boom:
        def __reduce__(self):
            return (Path("/should-not-run").touch, ())

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(usesearch.UsesearchError, match="not a SAM"):
        load_sam(preset.sam, "tiny", checkpoint=evil)
    assert not Path("/should-not-run").exists()
    # A file named by --sam-checkpoint: missing is said as such (no `models pull` brings it), junk names torch's reason.
    with pytest.raises(usesearch.MissingWeightsError, match="--sam-checkpoint .*absent.pth: no such file"):
        load_sam(preset.sam, "tiny", checkpoint=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk\n")
    with pytest.raises(usesearch.UsesearchError, match="junk.pth is damaged \\(not a torch checkpoint") as said:
        load_sam(preset.sam, "tiny", checkpoint=tmp_path / "junk.pth")
    assert "give a whole SAM" in str(said.value) and "models pull" not in str(said.value)
    (tmp_path / "junk.pth").write_bytes(pickle.dumps([1]))  # a pickle, but not of tensors: torch's reason
    with pytest.raises(usesearch.UsesearchError, match="is not a SAM checkpoint \\(torch cannot read it: "):
        load_sam(preset.sam, "tiny", checkpoint=tmp_path / "junk.pth")
    other = {k: v for k, v in a.state_dict().items() if not k.startswith("mask_decoder")}
    torch.save(other, tmp_path / "partial.pth")
    with pytest.raises(usesearch.UsesearchError, match="is not a SAM tiny checkpoint \\(preset 'tiny' builds"):
        load_sam(preset.sam, "tiny", checkpoint=tmp_path / "partial.pth")


def test_sam_checkpoint_is_verified_by_sha256(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    sam_cfg = replace(usesearch.get_preset("b16").sam, model_type="tiny")
    torch.save({"not": torch.zeros(1)}, tmp_path / sam_cfg.checkpoint)  # a whole file, not the real checkpoint
    with pytest.raises(usesearch.UsesearchError, match="SHA-256"):
        load_sam(sam_cfg, "b16")
    assert sha256_file(tmp_path / sam_cfg.checkpoint) != sam_cfg.sha256
    missing = replace(sam_cfg, checkpoint="absent.pth")
    with pytest.raises(usesearch.MissingWeightsError, match=str(tmp_path / "absent.pth")):
        load_sam(missing, "b16")


def test_a_checkpoint_copied_over_with_its_size_and_mtime_is_hashed_again(tmp_path):
    """The marker that spares rehashing a verified checkpoint names its size, times and
    inode: another file of the same size copied over it with its mtime kept (`cp -p`)
    passed as verified when the marker held size and mtime only."""
    import hashlib
    import os

    from usesearch.models.weights import verify_sha256

    path = tmp_path / "sam.pth"
    path.write_bytes(b"a" * 64)
    verify_sha256(path, hashlib.sha256(b"a" * 64).hexdigest())  # hashed, marker written
    assert path.with_name("sam.pth.sha256").is_file()
    before = path.stat()
    path.write_bytes(b"b" * 64)  # another checkpoint, same size, its mtime put back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(usesearch.UsesearchError, match="SHA-256"):
        verify_sha256(path, hashlib.sha256(b"a" * 64).hexdigest())


def test_a_truncated_or_foreign_weights_file_is_damaged_not_present(tmp_path, monkeypatch):
    """A cut-short download or an error page saved under the weights' name is found from
    the file's structure (no hashing): `models list` says damaged, loading and pulling
    refuse it in one line, and whole files of each format pass."""
    from safetensors.torch import save_file

    from usesearch.models import weights

    whole = tmp_path / "whole.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5)}, whole)
    torch.save({"a": torch.zeros(3)}, tmp_path / "whole.bin")
    (tmp_path / "legacy.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))  # torch's pre-zip format
    assert [weights.file_fault(tmp_path / n) for n in ("whole.safetensors", "whole.bin", "legacy.bin")] == [None] * 3
    data = whole.read_bytes()
    cases = {
        "cut.safetensors": (data[:-3], "truncated: "),
        "page.safetensors": (b"<!doctype html><title>404</title>", "not a safetensors file"),
        "cut.bin": ((tmp_path / "whole.bin").read_bytes()[:-30], "not a torch checkpoint"),
        "page.bin": (b"<html>rate limited</html>", "not a torch checkpoint"),
    }
    for name, (content, fault) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert fault in (weights.file_fault(tmp_path / name) or ""), name
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    b16 = usesearch.get_preset("b16")
    local = tmp_path / "weights" / f"{b16.dino.timm_name}.safetensors"
    local.parent.mkdir()
    local.write_bytes(data[:-3])
    rows = json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)
    dino = next(r for r in rows if (r["preset"], r["component"]) == ("b16", "dino"))
    assert dino["path"] == str(local) and not dino["present"] and dino["fault"].startswith("truncated")
    with pytest.raises(usesearch.UsesearchError, match="dino weights .* are damaged \\(truncated.*models pull"):
        weights.require(weights.dino_status(b16.dino), "b16")
    with pytest.raises(usesearch.UsesearchError, match="are damaged"):
        weights.pull(b16)  # refused before any download: the damaged file would still be read first
    listing = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert "damaged" in listing.output


def test_a_damaged_head_checkpoint_is_one_line_naming_its_file(tmp_path):
    """A config without its backbones, one that is not JSON or not an object, of a newer
    format or naming no preset we have, and weights cut short: each a UsesearchError naming
    the file, never a KeyError or safetensors' error."""
    from usesearch.models.checkpoint import load_head, save_head

    tiny = usesearch.get_preset("tiny")
    weights = save_head(tmp_path / "head", {"w": torch.arange(6.0)}, tiny)
    config = weights.with_suffix(".json")
    state, _ = load_head(tmp_path / "head", tiny)
    assert torch.equal(state["w"], torch.arange(6.0))
    good = config.read_text()
    for text, said in (
        (json.dumps({**json.loads(good), "backbones": None}), "is damaged: it does not name the backbones"),
        ("{not json", "is not a usesearch head config: "),
        ("[1, 2]", "is not a usesearch head config (format='list')"),
        # A newer format, or a preset this usesearch lacks, loaded silently or read as a --preset typed.
        (
            json.dumps({**json.loads(good), "version": 99}),
            "head of format version 99 (this usesearch reads 1-1): newer",
        ),
        (
            json.dumps({**json.loads(good), "version": "1"}),
            "head of format version '1' (this usesearch reads 1-1): damaged",
        ),
        (
            json.dumps({**json.loads(good), "preset": 5}),
            "head.json names preset 5, which this usesearch does not have (",
        ),
    ):
        config.write_text(text)
        with pytest.raises(usesearch.UsesearchError, match=re.escape(said)):
            load_head(tmp_path / "head", tiny)
    config.write_text(good)
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(usesearch.UsesearchError, match="head.safetensors is damaged: truncated"):
        load_head(tmp_path / "head", tiny)


def test_an_unreadable_or_foreign_weights_file_is_said_as_such(tmp_path, monkeypatch):
    """A whole file this user may not read is not "damaged, delete it"; a whole file of
    another model's weights is one line naming it, not torch's wall of missing keys."""
    from safetensors.torch import save_file

    from usesearch.models import backbones, weights

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    b16 = usesearch.get_preset("b16")
    local = tmp_path / "weights" / f"{b16.dino.timm_name}.safetensors"
    local.parent.mkdir()
    save_file({"not.a.dinov2.key": torch.zeros(3)}, local)
    with pytest.raises(usesearch.UsesearchError, match=f"{local} holds weights of another model .*pull b16"):
        backbones.build_dino(b16.dino, "b16")
    real_access = os.access
    monkeypatch.setattr(weights.os, "access", lambda p, mode: real_access(p, mode) and str(p) != str(local))
    with pytest.raises(usesearch.UsesearchError, match="cannot be read by this user: give it read permission"):
        weights.require(weights.dino_status(b16.dino), "b16")
    listing = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert "unreadable" in listing.output and "damaged" not in listing.output


def test_an_index_keeps_a_copy_of_its_head_and_one_made_before_says_where_its_head_was(trained_head, tmp_path):
    """An index built with a training run's head loaded it from that path for ever:
    the run's folder moved or cleaned away, no query could run. The index keeps a copy;
    one made before the copies (none in its folder) says where to put the head back,
    and takes its copy on its next indexing run."""
    import shutil

    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
    from usesearch.indexer.folder import HEAD_COPY

    path, use = trained_head
    photos = write_photos(tmp_path / "photos", ("coffee",))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**{**OPTS, "head": str(path)}))
    before = SegmentIndex.open(db).query("a cup", 3)
    assert before and sorted(p.name for p in (db / HEAD_COPY).iterdir()) == ["head.json", "head.safetensors"]
    moved = tmp_path / "moved"
    moved.mkdir()
    for file in path.parent.glob("ckpt*"):
        file.rename(moved / file.name)
    assert SegmentIndex.open(db).query("a cup", 3) == before  # the training run's folder cleaned away
    stats = SegmentIndex.open(db).stats()  # `info` named the run's head alone, not the copy searches load
    assert (stats["head"], stats["head_loaded"]) == (str(path), str(db / HEAD_COPY))
    write_photos(photos, ("rocket",))
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1  # a re-run loads the copy too
    (db / HEAD_COPY / "head.json").rename(tmp_path / "copy.json")  # the copy missing a file: said as a way on
    with pytest.raises(usesearch.UsesearchError, match=f"back there; the copy in {db / HEAD_COPY} lacks head.json"):
        SegmentIndex.open(db).query("a cup", 3)
    (tmp_path / "copy.json").rename(db / HEAD_COPY / "head.json")
    shutil.rmtree(db / HEAD_COPY)  # as an index made before the copies
    with pytest.raises(usesearch.UsesearchError, match=f"this index's head is gone from {path}.*put it back there"):
        SegmentIndex.open(db).query("a cup", 3)
    with torch.no_grad():
        use.head.proj.weight.mul_(2)
    usesearch.save_head(tmp_path / "ckpt", use.trainable_state_dict(), use.preset, {"step": 8})  # another head there
    with pytest.raises(usesearch.UsesearchError, match="is no longer the one it was built with: put that one back"):
        SegmentIndex.open(db).query("a cup", 3)
    # The changed head given to an indexing run: said as that path's head changed (it named the path twice).
    with pytest.raises(usesearch.UsesearchError, match=f"the head at {path} is no longer the one this index was"):
        index_paths([photos], db, IndexOptions(**{**OPTS, "head": str(path)}))
    for file in moved.iterdir():
        file.replace(path.parent / file.name)  # put back: the next run copies it
    write_photos(photos, ("camera",))
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 1
    assert (db / HEAD_COPY / "head.safetensors").is_file()
    assert SegmentIndex.open(db).query("a cup", 3)
    copied = db / HEAD_COPY / "head.safetensors"
    whole = copied.read_bytes()
    copied.write_bytes(whole[:-8] + bytes(b ^ 0xFF for b in whole[-8:]))  # the copy damaged: its way forward named
    with pytest.raises(usesearch.UsesearchError, match=f"sha256 differs.*made with is still at {path}: copy ") as said:
        SegmentIndex.open(db).query("a cup", 3)
    pairs = re.findall(r"(\S+) over (\S+?)(?: and |$)", str(said.value))
    assert len(pairs) == 2, said.value
    for original, copy in pairs:
        shutil.copyfile(original, copy)  # as it says
    assert SegmentIndex.open(db).query("a cup", 3)
    # Damaged again, then an indexing run given the right head: the copy is mended (it was
    # left, and every query refused the index).
    copied.write_bytes(whole[:-8] + bytes(b ^ 0xFF for b in whole[-8:]))
    write_photos(photos, ("page",))
    assert index_paths([photos], db, IndexOptions(**{**OPTS, "head": str(path)})).done == 1
    assert copied.read_bytes() == whole and SegmentIndex.open(db).query("a cup", 3)


def test_a_head_path_that_is_not_there_is_said_as_such_not_as_an_unknown_preset(tmp_path):
    from usesearch.errors import UnknownPresetError

    for missing in (str(tmp_path / "runs" / "head"), "nothere.safetensors"):
        with pytest.raises(UnknownPresetError, match="no head checkpoint there \\(nor is it a preset: "):
            usesearch.load_model(missing)
    with pytest.raises(UnknownPresetError, match="unknown preset 'b99'"):
        usesearch.load_model("b99")


def test_a_head_missing_one_of_its_two_files_names_that_one(tmp_path):
    """`--head x.safetensors` without its .json said "expected x.safetensors and x.json",
    the first of which was there."""
    from usesearch.errors import UsesearchError
    from usesearch.models.checkpoint import read_head_config

    (tmp_path / "x.safetensors").write_bytes(b"weights")
    with pytest.raises(UsesearchError) as refused:
        read_head_config(tmp_path / "x.safetensors")
    assert str(refused.value) == f"no head checkpoint at {tmp_path / 'x.safetensors'}: {tmp_path / 'x.json'} is missing"


def test_a_pytorch_pickle_given_as_a_head_is_said_never_to_be_loaded(tmp_path):
    """`--head x.pt` said only that x.safetensors and x.json were missing."""
    from usesearch.errors import UsesearchError
    from usesearch.models.checkpoint import read_head_config

    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(UsesearchError, match="a PyTorch pickle is never loaded .a head is safetensors . JSON"):
        read_head_config(tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True)["w"].shape == (2,)  # (the file itself left as it was)


def test_a_download_with_no_network_says_where_to_place_the_file(tmp_path, monkeypatch):
    """`models pull sam2:hiera_l` offline said "<urlopen error [Errno -2] Name or service not known>"."""
    import socket
    from urllib.error import URLError

    import torch.hub

    from usesearch.errors import UsesearchError
    from usesearch.models import weights

    def offline(url, dest, hash_prefix=None, progress=True):
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UsesearchError) as refused:
        weights._download("https://example.org/w.pt", tmp_path / "w.pt", None)
    said = str(refused.value)
    assert (
        "no answer from the network (Name or service not known)" in said and f"place it at {tmp_path / 'w.pt'}" in said
    )
