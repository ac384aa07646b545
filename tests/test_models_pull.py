"""`usesearch models pull`: weights fetched into place with no lock or stray staging left, a pull
offline, unreachable, cut short or gated said at once in one line, and a damaged or misplaced file
refused before any download (CLIP, SAM, SAM 2 and SAM 3 alike)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import usesearch
from usesearch.cli.app import app
from usesearch.masks import sam3_weights


def _fake_hub_download(partial: bytes, succeed: bool):
    """Stands in for huggingface_hub.hf_hub_download(local_dir=...): it leaves a lock file
    and, when ``partial``, an incomplete download behind, as the real one does."""

    def download(repo_id, filename, local_dir):
        meta = Path(local_dir) / ".cache" / "huggingface" / "download"
        meta.mkdir(parents=True)
        (meta / f"{filename}.lock").touch()
        if partial:
            (meta / f"{filename}.incomplete").write_bytes(partial)
        if not succeed:
            raise OSError("Name or service not known\nsecond line of the hub's message")
        (Path(local_dir) / filename).write_bytes(b"the checkpoint")
        return str(Path(local_dir) / filename)

    return download


@pytest.mark.parametrize("partial", [b"", b"half a checkpoint"])
def test_failed_sam3_pull_leaves_no_lock_and_keeps_only_a_resumable_partial(tmp_path, monkeypatch, partial):
    import huggingface_hub
    import huggingface_hub.constants

    from usesearch.masks.sam3_weights import pull_sam3

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the fake stands in for the network
    monkeypatch.setattr(sam3_weights, "refuse_when_unreachable", lambda what: None)  # the fake is reachable
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub_download(partial, succeed=False))
    with pytest.raises(usesearch.UsesearchError, match="could not download sam3.pt") as err:
        pull_sam3()
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("*.lock"))
    assert [p.read_bytes() for p in tmp_path.rglob("*.incomplete")] == ([partial] if partial else [])
    if not partial:
        assert list(tmp_path.iterdir()) == []


def test_sam3_pull_moves_the_checkpoint_into_place_and_drops_the_staging(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    from usesearch.masks.sam3_weights import pull_sam3, sam3_status

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sam3_weights, "refuse_when_unreachable", lambda what: None)  # the fake is reachable
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub_download(b"", succeed=True))
    assert pull_sam3() == [f"sam3: downloaded {tmp_path / 'sam3.pt'}"]
    assert [p.name for p in tmp_path.iterdir()] == ["sam3.pt"]
    assert (tmp_path / "sam3.pt").read_bytes() == b"the checkpoint"
    assert sam3_status().path == tmp_path / "sam3.pt"  # (the fake's bytes are no checkpoint: damaged, not missing)


def test_a_pull_from_hugging_face_while_offline_says_so(tmp_path, monkeypatch):
    """Not the hub's 'check your connection', nor SAM 3's advice for a gated model."""
    import huggingface_hub
    import huggingface_hub.constants

    from usesearch.masks.sam3_weights import pull_sam3
    from usesearch.models.weights import pull

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(usesearch.UsesearchError, match="SAM 3 .* comes from Hugging Face and HF_HUB_OFFLINE is set"):
        pull_sam3()
    with pytest.raises(usesearch.UsesearchError, match="CLIP .* comes from Hugging Face and HF_HUB_OFFLINE is set"):
        pull(usesearch.get_preset("b16"))
    assert list(tmp_path.iterdir()) == []


def test_a_pull_from_an_unreachable_hugging_face_says_so_at_once(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE the hub retried for ~50 s, twenty lines of its retries,
    then named a fallback file. Its host is tried once first; behind a proxy it is not."""
    import errno
    from socket import socket

    import huggingface_hub.constants

    from usesearch.masks.sam3_weights import pull_sam3
    from usesearch.models import weights

    def unreachable(address, timeout):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights.socket, "create_connection", unreachable)
    for name in weights.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for pulling, what in ((lambda: weights.pull(usesearch.get_preset("b16")), "CLIP"), (pull_sam3, "SAM 3")):
        with pytest.raises(usesearch.UsesearchError, match=f"{what} .* which cannot be reached from here \\(Network"):
            pulling()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    weights.refuse_when_unreachable("CLIP")  # a direct connection says nothing of a proxy's
    monkeypatch.delenv("HTTPS_PROXY")
    tried = []
    monkeypatch.setattr(weights.socket, "create_connection", lambda address, timeout: tried.append(address) or socket())
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://mirror.example:8080")
    weights.refuse_when_unreachable("CLIP")
    assert tried == [("mirror.example", 8080)]  # a mirror on a port of its own (HF_ENDPOINT), not 443


def test_pull_checks_a_present_sam_checkpoint_instead_of_skipping_it(tmp_path, monkeypatch):
    from dataclasses import replace

    from usesearch.models import weights

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    tiny = usesearch.get_preset("tiny")
    preset = replace(tiny, sam=replace(usesearch.get_preset("b16").sam, model_type="tiny"))
    (tmp_path / preset.sam.checkpoint).write_bytes(b"junk")
    monkeypatch.setattr(weights, "_download", lambda *a: pytest.fail("a present file is checked, not fetched"))
    with pytest.raises(usesearch.UsesearchError, match="are damaged \\(not a torch checkpoint.*delete the file"):
        weights.pull(preset)
    torch.save({"x": torch.zeros(2)}, tmp_path / preset.sam.checkpoint)  # whole, but not the checkpoint
    with pytest.raises(usesearch.UsesearchError, match="has SHA-256 .* expected .*Delete it"):
        weights.pull(preset)


def test_a_sam3_pull_cut_short_or_gated_leaves_no_lock_and_says_why(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import GatedRepoError

    from usesearch.masks.sam3_weights import pull_sam3

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sam3_weights, "refuse_when_unreachable", lambda what: None)  # the fake is reachable
    gated = GatedRepoError.__new__(GatedRepoError)  # as the hub raises it for a licence not accepted
    gated.args = ("401 Client Error",)
    for raised, expect in ((KeyboardInterrupt(), KeyboardInterrupt), (gated, usesearch.UsesearchError)):

        def download(repo_id, filename, local_dir, raised=raised):
            _fake_hub_download(b"", succeed=True)(repo_id, filename, local_dir)
            raise raised

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        with pytest.raises(expect) as caught:
            pull_sam3()
        assert not list(tmp_path.rglob("*.lock")), raised
    assert "it is gated: accept its licence" in str(caught.value)


def test_pull_of_an_unknown_name_lists_every_name_it_takes():
    result = CliRunner().invoke(app, ["models", "pull", "sam2"])
    assert result.exit_code == 2 and "sam2:MODEL" in result.output and "sam3" in result.output


def test_pull_of_a_seeded_random_model_says_it_has_no_weights():
    """`pull sam2:tiny` said "all weights ... are already present" of a model that has none."""
    for name in ("tiny", "sam2:tiny"):
        result = CliRunner().invoke(app, ["models", "pull", name])
        assert result.exit_code == 0 and "no weights to pull" in result.output and "seeded random" in result.output


def test_models_list_has_sam2_and_its_pull_refuses_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    rows = json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)
    sam2 = [r for r in rows if r["preset"] == "--masker sam2"]
    assert {r["weights"] for r in sam2} >= {"SAM 2.1 hiera_l", "SAM 2.1 hiera_t"} and not any(
        r["present"] for r in sam2
    )
    (tmp_path / "sam2.1_hiera_large.pt").write_bytes(b"<html>not a checkpoint</html>")
    result = CliRunner().invoke(app, ["models", "pull", "sam2:hiera_l"])
    assert result.exit_code == 2 and "are damaged" in result.stderr and "pull sam2:hiera_l" in result.stderr


def test_a_folder_in_a_checkpoints_place_is_a_fault_refused_before_any_download(tmp_path, monkeypatch):
    """torch's downloader moved the file into such a folder and pull said 'downloaded';
    `models list` said missing, and every pull downloaded it again (375 MB for b16)."""
    from usesearch.models import weights

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "_download", lambda *a: pytest.fail("a download started"))
    (tmp_path / usesearch.get_preset("b16").sam.checkpoint).mkdir()
    (tmp_path / "sam2.1_hiera_tiny.pt").mkdir()
    for name in ("b16", "sam2:hiera_t"):
        result = CliRunner().invoke(app, ["models", "pull", name])
        assert result.exit_code == 2 and "damaged (a folder, not a file)" in result.stderr, result.output
    rows = json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)
    assert any(r.get("fault") == "a folder, not a file" for r in rows if r["weights"] == "SAM 2.1 hiera_t")


def test_a_download_that_is_no_checkpoint_is_removed_and_said(tmp_path, monkeypatch):
    """SAM 2 has no SHA-256 to check: an error page saved under its name passed as downloaded."""
    import torch.hub

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dest, **kw: open(dest, "wb").write(b"<html>"))
    result = CliRunner().invoke(app, ["models", "pull", "sam2:hiera_t"])
    assert result.exit_code == 2 and "is not a checkpoint (not a torch checkpoint" in result.stderr, result.output
    assert not (tmp_path / "sam2.1_hiera_tiny.pt").exists()


def test_a_sam3_pull_refuses_a_damaged_file_of_the_users_and_keeps_it(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    from usesearch.masks.sam3_weights import pull_sam3

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sam3_weights, "refuse_when_unreachable", lambda what: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub_download(b"", succeed=True))
    (tmp_path / "sam3.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(
        usesearch.UsesearchError, match="are damaged .*delete the file and run `usesearch models pull sam3`"
    ):
        pull_sam3()
    assert (tmp_path / "sam3.pt").read_bytes() == b"PK\x03\x04 cut short"


def test_a_failed_download_leaves_no_empty_cache_folder_it_made(tmp_path, monkeypatch):
    """A pull with no network made ~/.cache/usesearch and left it empty; a folder that held
    something before is kept, and so is the file of a download that failed its check."""
    import urllib.error

    import torch.hub

    def unreachable(url, dest, **kw):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    home = tmp_path / "cache" / "usesearch"
    monkeypatch.setenv("USESEARCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    result = CliRunner().invoke(app, ["models", "pull", "sam2:hiera_t"])
    assert result.exit_code == 2 and "no answer from the network" in result.stderr, result.output
    assert not (tmp_path / "cache").exists()  # (both folders the pull made)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "other").write_text("kept")
    result = CliRunner().invoke(app, ["models", "pull", "sam2:hiera_t"])
    assert result.exit_code == 2 and not home.exists() and (tmp_path / "cache" / "other").read_text() == "kept"
