"""Where each preset's weights live, whether they are present, and how to fetch them.

CLIP and DINOv2 resolve through open_clip's and timm's normal Hugging Face cache,
or from a file under ``$USESEARCH_HOME/weights``; SAM checkpoints from an explicit
path or ``$USESEARCH_HOME``, verified by SHA-256. Nothing here downloads unless
``pull`` is called: loading a missing file raises ``MissingWeightsError`` at once
instead of letting a hub client retry and fail deep inside.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from usesearch.errors import MissingWeightsError, UsesearchError, first_line
from usesearch.io.files import stat_signature
from usesearch.models.config import ClipConfig, DinoConfig, PresetConfig, SamConfig

_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def usesearch_home() -> Path:
    return Path(os.environ.get("USESEARCH_HOME", Path.home() / ".cache" / "usesearch")).expanduser()


@dataclass(frozen=True)
class WeightStatus:
    component: str  # "clip", "dino" or "sam"
    name: str
    needed: bool  # False for seeded random (tiny) components
    path: Path | None  # where the file was found
    expected: str  # where a user can put it, for the error message
    source: str  # where `models pull` fetches it from
    fault: str | None = None  # why the file found cannot be its weights (see ``file_fault``)

    @property
    def present(self) -> bool:
        """Needs no file, or has one that looks whole (a damaged one is not present)."""
        return not self.needed or (self.path is not None and self.fault is None)


UNREADABLE = "cannot be read by this user"


def file_fault(path: Path | None) -> str | None:
    """Why a weights file cannot be whole, from its structure alone: a safetensors file
    must open (safetensors checks that its header covers the file exactly); a torch
    checkpoint must be a zip archive with its directory at the end, or a legacy
    pickle. A truncated download or an HTML error page saved under the name is caught
    here, without hashing gigabytes (SAM's checkpoint is hashed too, where it is loaded
    or pulled)."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    if path is None:
        return None
    if not path.is_file():  # a folder in its place: torch's downloader would move the file into it
        return "a folder, not a file" if path.is_dir() else "not a regular file"
    if not os.access(path, os.R_OK):  # whole, perhaps: said as what it is, never as "damaged, delete it"
        return UNREADABLE
    try:
        if path.suffix != ".safetensors":
            with open(path, "rb") as f:
                if zipfile.is_zipfile(f) or (f.seek(0) == 0 and f.read(1) == b"\x80"):  # zip, or a legacy pickle
                    return None
            return "not a torch checkpoint (neither a zip archive nor a pickle)"
        with safe_open(str(path), framework="numpy"):  # the header alone; "pt" would import torch
            return None
    except OSError as exc:
        return exc.strerror or first_line(exc)
    except SafetensorError as exc:  # its words: "incomplete metadata, file not fully covered", "header too small"
        reason = first_line(exc).removeprefix("Error while deserializing header: ")
        size = path.stat().st_size
        if "not fully covered" in reason:
            return f"truncated: {size} bytes that its header does not account for exactly"
        return f"not a safetensors file ({size} bytes, {reason})"


def _hub_cached(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.exists(found):
            return Path(found)
    return None


def _first_existing(paths: list[Path]) -> Path | None:
    """The first that exists (a folder in a file's place too: ``file_fault`` says so)."""
    return next((p for p in paths if p.exists()), None)


# open_clip's Hugging Face repos for the presets' CLIP weights, as its pretrained table
# gives them (a test holds the two equal): `models list` and the weights check need no
# open_clip import for them (torch and open_clip: ~4 s and 900 MB a call on 2 cores).
CLIP_HUB_REPOS = {
    ("ViT-L-14-336", "openai"): "timm/vit_large_patch14_clip_336.openai",
    ("ViT-B-16", "openai"): "timm/vit_base_patch16_clip_224.openai",
}


def _clip_repo(cfg: ClipConfig) -> str:
    """The Hugging Face repo open_clip fetches ``cfg``'s weights from ("" for none)."""
    known = CLIP_HUB_REPOS.get((cfg.model_name, str(cfg.pretrained)))
    if known is not None:
        return known
    from usesearch.models.clip_library import open_clip  # another model or tag: open_clip's own table

    hub = (open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained) or {}).get("hf_hub", "")
    return hub.rstrip("/")


def clip_status(cfg: ClipConfig) -> WeightStatus:
    if cfg.pretrained is None:
        return WeightStatus("clip", cfg.model_name, False, None, "", "seeded random")
    if Path(cfg.pretrained).is_file():
        return WeightStatus("clip", cfg.model_name, True, Path(cfg.pretrained), cfg.pretrained, cfg.pretrained)
    stem = f"{cfg.model_name}-{cfg.pretrained}"
    local_dir = usesearch_home() / "weights"
    local = [local_dir / f"{stem}.safetensors", local_dir / f"{stem}.bin"]
    repo = _clip_repo(cfg)
    found = _first_existing(local) or (_hub_cached(repo, _CLIP_HUB_FILES) if repo else None)
    source = f"hf.co/{repo} ({_CLIP_HUB_FILES[0]})" if repo else f"open_clip tag {cfg.pretrained}"
    name = f"{cfg.model_name} ({cfg.pretrained})"
    return WeightStatus("clip", name, True, found, str(local[0]), source, file_fault(found))


def dino_status(cfg: DinoConfig) -> WeightStatus:
    if not cfg.pretrained:
        return WeightStatus("dino", cfg.timm_name, False, None, "", "seeded random")
    local = usesearch_home() / "weights" / f"{cfg.timm_name}.safetensors"
    repo = f"timm/{cfg.timm_name}"
    found = _first_existing([local]) or _hub_cached(repo, _TIMM_HUB_FILES)
    source = f"hf.co/{repo} ({_TIMM_HUB_FILES[0]})"
    return WeightStatus("dino", cfg.timm_name, True, found, str(local), source, file_fault(found))


def sam_status(cfg: SamConfig, checkpoint: str | os.PathLike | None = None) -> WeightStatus:
    if cfg.checkpoint is None and checkpoint is None:
        return WeightStatus("sam", cfg.model_type, False, None, "", "seeded random")
    expected = Path(checkpoint) if checkpoint else usesearch_home() / str(cfg.checkpoint)
    found = expected if expected.exists() else None
    return WeightStatus("sam", f"SAM {cfg.model_type}", True, found, str(expected), cfg.url or "", file_fault(found))


def preset_status(preset: PresetConfig) -> list[WeightStatus]:
    return [clip_status(preset.clip), dino_status(preset.dino), sam_status(preset.sam)]


def require(status: WeightStatus, preset_name: str) -> Path:
    """Path of a needed file, or a ``MissingWeightsError`` that says where to put it.
    Callers ask only for needed files: a seeded-random component has none."""
    if not status.needed:
        raise ValueError(f"{status.component} {status.name} is seeded random: there is no file to require")
    if status.fault is not None:
        raise UsesearchError(damaged(status, preset_name))
    if status.path is None:
        raise MissingWeightsError(
            f"{status.component} weights for preset {preset_name!r} are not on this machine: "
            f"{status.name}. Run `usesearch models pull {preset_name}` where the network is "
            f"reachable, or put the file at {status.expected} (source: {status.source}).",
            hint="Or try the pipeline with `--preset tiny` (seeded random weights: runs offline, ranks nothing).",
        )
    return status.path


def refuse_missing_clip(preset_name: str | None) -> None:
    """A preset's CLIP weights (None: the default preset's), which every embedder loads,
    refused missing or damaged as ``require`` refuses them at load, but before the model
    libraries import (~5-7 s a command here: a first `index` without weights waited that
    long for its one line). A name no preset has is left to the model's load (a head
    checkpoint, a typo)."""
    from usesearch.models.presets import DEFAULT_PRESET, PRESETS

    preset_name = preset_name or DEFAULT_PRESET
    preset = PRESETS.get(preset_name)
    status = clip_status(preset.clip) if preset is not None else None
    if status is not None and status.needed:
        require(status, preset_name)


def damaged(status: WeightStatus, preset_name: str = "PRESET") -> str:
    if status.fault == UNREADABLE:
        return f"{status.component} weights {status.path} cannot be read by this user: give it read permission"
    return (
        f"{status.component} weights {status.path} are damaged ({status.fault}): delete the file and run "
        f"`usesearch models pull {preset_name}` again"
    )


# -- SHA-256 verification -----------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remembered_sha256(path: Path) -> str:
    """A file's SHA-256, hashed once per content: remembered under $USESEARCH_HOME by the
    file's real path and stat signature (size, times, inode), so a user's 2.5 GB
    checkpoint named on every run is not hashed on every run, and nothing is written
    beside it."""
    real = os.path.realpath(path)
    note = usesearch_home() / ".hashes" / hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()
    signature = stat_signature(Path(real).stat())
    try:
        sha, remembered = note.read_text().split()
        if remembered == signature:
            return sha
    except (OSError, ValueError):
        pass
    sha = sha256_file(Path(real))
    try:
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(f"{sha} {signature}\n")
    except OSError:
        pass  # a read-only home: hashed again next time
    return sha


def verify_sha256(path: Path, expected: str | None) -> None:
    """Hash once; a marker keyed on the file's size, times and inode saves rehashing 2.5 GB
    on every load (size and mtime alone passed another file copied over it with `cp -p`)."""
    if not expected:
        return
    marker = path.with_name(path.name + ".sha256")
    stamp = f"{expected} {stat_signature(path.stat())}"
    if marker.is_file() and marker.read_text().strip() == stamp:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise UsesearchError(
            f"{path} has SHA-256 {actual}, expected {expected}: the file is corrupt or a "
            "different checkpoint. Delete it and pull it again "
            "(`usesearch models list` names the preset it belongs to)."
        )
    try:
        marker.write_text(stamp + "\n")
    except OSError:
        pass  # a read-only weights folder just means hashing again next time


# -- downloading (only ever on request) --------------------------------------------------


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """torch.hub's downloader: a progress bar, a temporary file renamed into place
    only when complete, and a hash check (its prefix; the full SHA-256 below)."""
    made = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_and_check(url, dest, sha256)
    except BaseException:
        for folder in made:  # (deepest first) a failed pull leaves no empty cache folder behind
            try:
                folder.rmdir()
            except OSError:  # (not empty: something else put a file there)
                break
        raise


def _fetch_and_check(url: str, dest: Path, sha256: str | None) -> None:
    from torch.hub import download_url_to_file

    try:
        download_url_to_file(url, str(dest), hash_prefix=sha256, progress=True)
    except Exception as exc:  # noqa: BLE001 - network and hash errors alike become one line
        from urllib.error import URLError

        if isinstance(exc, URLError) and not isinstance(exc.reason, str):  # no network: urlopen's words of it
            reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
            raise UsesearchError(
                f"could not download {url}: no answer from the network ({reason}); fetch it on a machine "
                f"that has one and place it at {dest}"
            ) from None
        raise UsesearchError(f"could not download {url}: {first_line(exc)}") from None
    verify_sha256(dest, sha256)
    fault = file_fault(dest)
    if fault is not None:  # no SHA-256 to check (SAM 2's): an error page saved under the name, say
        dest.unlink(missing_ok=True)  # the file this download made, not one of the user's
        raise UsesearchError(f"the download from {url} is not a checkpoint ({fault}): removed; try again later")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def refuse_when_unreachable(what: str, timeout: float = 5.0) -> None:
    """Before a download from Hugging Face: with ``HF_HUB_OFFLINE`` set it cannot start,
    said as such (not as the hub's 'check your connection', or a gated model's advice);
    else its host is tried once, directly: unreachable, the hub retried for ~50 s and
    printed twenty lines of its retries. Skipped behind a proxy, which a direct
    connection would not use."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UsesearchError(
            f"{what} comes from Hugging Face and HF_HUB_OFFLINE is set: unset it where the network is reachable"
        )
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    endpoint = urlsplit(constants.ENDPOINT)  # HF_ENDPOINT: a mirror, perhaps on a port of its own
    host = endpoint.hostname or "huggingface.co"
    try:
        socket.create_connection((host, endpoint.port or (80 if endpoint.scheme == "http" else 443)), timeout).close()
    except OSError as exc:
        raise UsesearchError(
            f"{what} comes from {host}, which cannot be reached from here ({exc.strerror or exc}): pull where the "
            "network is reachable, or put the file where `usesearch models list` says"
        ) from None


def pull(preset: PresetConfig) -> list[str]:
    """Fetch every missing weights file of a preset; returns what was done, per component."""
    done = []
    clip, dino, sam = preset_status(preset)
    for status in (clip, dino, sam):
        if status.fault is not None:  # a file of the user's, not ours to delete; a download beside it would not be read
            raise UsesearchError(damaged(status, preset.name))
    if clip.needed and not clip.present:
        from usesearch.models.clip_library import open_clip

        refuse_when_unreachable(f"CLIP {clip.name} ({clip.source})")
        try:
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(preset.clip.model_name, preset.clip.pretrained))
        except Exception as exc:
            raise UsesearchError(f"could not download CLIP weights ({clip.source}): {first_line(exc)}") from None
        done.append(f"clip: downloaded {clip.name}")
    if dino.needed and not dino.present:
        from huggingface_hub import hf_hub_download

        refuse_when_unreachable(f"DINOv2 {dino.name} ({dino.source})")
        try:
            hf_hub_download(f"timm/{preset.dino.timm_name}", _TIMM_HUB_FILES[0])
        except Exception as exc:
            raise UsesearchError(f"could not download DINOv2 weights ({dino.source}): {first_line(exc)}") from None
        done.append(f"dino: downloaded {dino.name}")
    if sam.needed and sam.path is not None:
        verify_sha256(sam.path, preset.sam.sha256)  # a present file that is not the checkpoint is said, not skipped
    elif sam.needed:
        _download(str(preset.sam.url), Path(sam.expected), preset.sam.sha256)
        done.append(f"sam: downloaded {sam.expected}")
    return done
