"""The curated dataset on disk: JSONL shards of image records plus a manifest.

One line per image and source: ``{"path", "source", "sha256", "width", "height", "pairs_before_nms",
"segments": [{"rle": {"size", "counts"}, "bbox", "area", "score", "texts": [{"text",
"source", "kind"}]}]}``. Masks are COCO compressed RLE (``pycocotools.mask.decode``).
Lines are appended and flushed one image at a time; a torn last line from a crash
is ignored when reading and when resuming.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from usesearch.errors import UsesearchError, first_few
from usesearch.io.atomic import temporary_of, write_atomic
from usesearch.io.files import read_bytes
from usesearch.io.locks import one_writer
from usesearch.io.own_folders import OS_FILES
from usesearch.masks import rle

from .records import Segment

FORMAT = "usesearch-segments"
MANIFEST = "manifest.json"
LOCK_FILE = ".curate.lock"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest (None: there is none). A damaged one is refused in one line: it
    holds the settings a re-run must match, which must not silently become none."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        manifest = exc
    if not isinstance(manifest, dict):
        raise UsesearchError(
            f"{path} is damaged ({manifest if isinstance(manifest, Exception) else 'not a JSON object'}): "
            "if it is a curated dataset's, delete it and run the same `usesearch curate run` again (the same "
            "models and settings: the earlier runs' are then known no more, nor checked), which writes it anew "
            "(the shards are kept); if it is another program's file, give curation a folder of its own"
        )
    if manifest.get("format") != FORMAT:  # a file of that name of the user's: never rewritten as ours
        raise UsesearchError(
            f'{path} is not a curated dataset\'s manifest (no "format": "{FORMAT}"): give curation a folder of its own'
        )
    return manifest


def unfinished_run(recorded: object) -> str:
    """A run cut short, as the manifest names it, in today's spelling: ``curate run``'s
    ``--source`` was renamed ``--input-format``, and the same command in the new spelling
    is the same run: it finishes the folder."""
    run = str(recorded)
    return "--input-format " + run.removeprefix("--source ") if run.startswith("--source ") else run


def require_dataset(dataset_dir: str | os.PathLike) -> Path:
    """The folder, if it is a finished curated dataset; else one line saying what it is
    instead (a curation cut short, first or re-run, is unfinished until a run ends)."""
    folder = Path(dataset_dir)
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("finished", True):
        return folder
    if manifest is not None or any((folder / "shards").glob("*.jsonl")):
        writing = _writer_now(folder)
        if writing:
            raise UsesearchError(f"{folder} is being curated now (curate run, pid {writing}): wait for it to finish")
        cut = [str(run) for run in (manifest or {}).get("unfinished") or [] if run]  # as the file has them
        raise UsesearchError(
            f"{folder} is an unfinished curation (a run was cut short"
            + (f": {'; '.join(cut)}" if cut else "")
            + "): run the same `usesearch curate run` again to finish it (it resumes)"
            + (
                f'; an input that is gone for good: remove its line from "unfinished" in {folder / MANIFEST}'
                if cut
                else ""
            )
        )
    if not folder.exists():  # a typo, or a dataset moved: "no manifest.json" sent them looking inside it
        raise UsesearchError(
            f"{folder} does not exist: give a curated dataset's folder (`usesearch curate run` makes one)"
        )
    raise UsesearchError(f"{folder} is not a curated dataset (no {MANIFEST}): make one with `usesearch curate run`")


DATASET_FILES = (MANIFEST, "shards", "cache", "failures.jsonl", LOCK_FILE)  # what curation writes in its folder


def check_dataset_folder(dataset_dir: str | os.PathLike) -> None:
    """A folder for `curate run` to curate into: new, empty, or a dataset's (one whose
    first run was cut short before its manifest too). One holding other files (the
    photo folder itself, someone's notes) is refused: the dataset's files would mix with
    theirs, and the folder would count as a dataset from then on (a training run in it
    refused). (A dataset written with its photos inside, as ``training.synthetic``'s, is
    the Python API's to make.)"""
    folder = Path(dataset_dir)
    if not folder.is_dir() or (folder / MANIFEST).is_file() or any((folder / "shards").glob("*.jsonl")):
        return  # (a dataset cut short before its manifest: resumed whatever else the folder holds)
    others = sorted(
        name
        for name in os.listdir(folder)
        if name not in (*DATASET_FILES, *OS_FILES) and temporary_of(name) not in DATASET_FILES
    )
    if others:
        raise UsesearchError(
            f"{folder} holds files that are not a curated dataset's ({first_few(others)}): "
            "give --dataset-dir a new or empty folder"
        )


def _writer_now(folder: Path) -> str | None:
    """The pid of a curate run writing to ``folder`` now (None: none, or it cannot tell)."""
    if not (folder / LOCK_FILE).is_file():
        return None
    try:
        with one_writer(folder / LOCK_FILE, UsesearchError):  # refused with the holder's pid
            return None
    except UsesearchError as refused:
        return str(refused)
    except OSError:  # a read-only folder: no lock can be taken to find out
        return None


def read_records(dataset_dir: str | os.PathLike, *, finished: bool = True) -> Iterator[dict[str, Any]]:
    """Every image record, in shard order. ``finished=False`` (the writer resuming) also
    reads a folder that has no manifest yet."""
    if finished:
        require_dataset(dataset_dir)
        listed = (read_manifest(Path(dataset_dir)) or {}).get("shards") or []
        missing = [name for name in listed if not (Path(dataset_dir) / "shards" / str(name)).is_file()]
        if missing:  # its photos would silently count as never curated
            raise UsesearchError(
                f"{dataset_dir}: shard {first_few(missing, 1)} {'is' if len(missing) == 1 else 'are'} missing"
                ": restore it, or run `usesearch curate run` again to curate its photos anew"
            )
    for shard in sorted((Path(dataset_dir) / "shards").glob("*.jsonl")):
        with open(shard, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    record = json.loads(raw.decode("utf-8"))  # strict: a flipped byte must not pass as U+FFFD
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    if not raw.endswith(b"\n"):  # a torn final line from an interrupted run (runs never append to it)
                        continue
                    unreadable = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
                    raise UsesearchError(_damaged(shard, number, unreadable)) from None
                fault = _record_fault(record)
                if fault:
                    raise UsesearchError(_damaged(shard, number, fault))
                yield record


def stale_contents(paths_and_contents: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (path, sha256) records that a photo replaced since made stale: where one path
    was curated with several contents (replaced, then curated again), every content but
    the one the file holds now (read only for such paths), or where it cannot be read,
    every content but the last curated. Those records name pixels no longer there: a
    trainer given them would skip the path, its current record too."""
    by_path: dict[str, dict[str, None]] = {}
    for path, sha256 in paths_and_contents:
        contents = by_path.setdefault(path, {})
        contents.pop(sha256, None)  # curated again: last in the order
        contents[sha256] = None
    stale: set[tuple[str, str]] = set()
    for path, contents in by_path.items():
        if len(contents) < 2:
            continue
        try:
            now: str | None = read_bytes(path)[1]
        except (OSError, UsesearchError):
            now = None
        keep = now if now in contents else list(contents)[-1]
        stale.update((path, sha256) for sha256 in contents if sha256 != keep)
    return stale


def _damaged(shard: Path, number: int, why: str) -> str:
    return (
        f"{shard} line {number} is damaged ({why}): restore the file, or move it away and run "
        "`usesearch curate run` again to curate its photos anew"
    )


def _record_fault(record: Any) -> str | None:
    """What is wrong with an image record read back (None: nothing), checked before any
    reader trusts its keys."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [key for key in ("path", "sha256", "segments") if key not in record]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(record["segments"], list):
        return "its segments are not a list"
    for k, segment in enumerate(record["segments"]):
        if not isinstance(segment, dict) or not {"rle", "bbox", "area", "texts"} <= segment.keys():
            return f"segment {k} lacks rle, bbox, area or texts"
        if not isinstance(segment["texts"], list) or not all(
            isinstance(t, dict) and {"text", "source", "kind"} <= t.keys() for t in segment["texts"]
        ):
            return f"segment {k} has a text without text, source or kind"
        if not rle.is_compressed(segment["rle"]):  # a flipped byte mostly leaves its alphabet
            return f"segment {k}'s mask is not a COCO RLE (size [h, w], counts in '0'..'o')"
    return None


def read_segments(record: dict[str, Any]) -> list[Segment]:
    return [Segment.from_json(s) for s in record["segments"]]


class DatasetWriter:
    """Appends image records; knows which images (by source and content hash) are
    done. One writer a folder: a second curate run into it is refused, not interleaved."""

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        shard_size: int = 1000,
        source: str = "",
        settings: dict[str, Any] | None = None,
        run: str = "",
    ):
        self.dir = Path(dataset_dir)
        self.created = not self.dir.exists()  # a run that leaves nothing in it takes it back
        (self.dir / "shards").mkdir(parents=True, exist_ok=True)

        def refusal(holder: str) -> Exception:
            return UsesearchError(f"another curate run (pid {holder}) is writing to {self.dir}; wait for it to finish")

        self._lock = ExitStack()
        self._lock.enter_context(one_writer(self.dir / LOCK_FILE, refusal))
        self.shard_size, self.source = shard_size, source
        # What the manifest records: the settings of every run so far, this one's over them.
        self.before = read_manifest(self.dir)
        self.settings = {**{k: v for k, v in (self.before or {}).items() if k not in _OWN}, **(settings or {})}
        # The runs cut short so far (their source and input): the folder is finished once
        # each has ended, not when any other run does (a whole second source would hide them).
        self.run = run or source or "curate run"
        self.unfinished = {unfinished_run(r) for r in (self.before or {}).get("unfinished") or []}
        self.written_now: dict[str, str] = {}  # sha256 -> path, of this run's records
        # A record is done for its own source only: a second source of the same photo
        # adds its own pairs. Records written before sources were kept count for any.
        # The value: the digest of the photo's annotations its record was made from
        # (``index --coco``'s file's entry; None: a source without, or an older record).
        self.done: dict[tuple[str | None, str], str | None] = {}
        self.curated_at: dict[str, str] = {}  # sha256 -> the path its first record names (a copy's, said)
        for r in read_records(self.dir, finished=False):
            self.done[(r.get("source"), r["sha256"])] = r.get("annotations_sha256")
            self.curated_at.setdefault(r["sha256"], r.get("path") or "")
        # After the highest shard, never into one: an old shard stays as it is (a gap
        # from a deleted shard must not send new records into an existing file).
        numbers = [int(p.stem.rsplit("-", 1)[-1]) for p in (self.dir / "shards").glob("shard-*.jsonl")]
        self._shard = max(numbers, default=-1) + 1
        self._in_shard = shard_size  # start a new shard per run
        self._file: TextIO | None = None

    def is_done(self, sha256: str) -> bool:
        return (self.source, sha256) in self.done or (None, sha256) in self.done

    def annotations_changed(self, sha256: str, annotations_sha256: str | None) -> bool:
        """A done photo whose annotations in the source differ from those its record was made from."""
        recorded = self.done.get((self.source, sha256))
        return None not in (recorded, annotations_sha256) and recorded != annotations_sha256

    def write(
        self,
        path: str,
        sha256: str,
        hw: tuple[int, int],
        segments: list[Segment],
        pairs_before_nms: int,
        annotations_sha256: str | None = None,
    ) -> None:
        if self._file is None:  # this run's first record: the folder is unfinished until the run ends
            self._write_manifest(finished=False)
        if self._file is None or self._in_shard >= self.shard_size:
            if self._file:
                self._file.close()
            self._file = open(self.dir / "shards" / f"shard-{self._shard:05d}.jsonl", "a", encoding="utf-8")
            self._shard += 1
            self._in_shard = 0
        record = {
            "path": path,
            "source": self.source,
            "sha256": sha256,
            "height": hw[0],
            "width": hw[1],
            "pairs_before_nms": pairs_before_nms,
            "segments": [s.to_json() for s in segments],
        }
        if annotations_sha256 is not None:
            record["annotations_sha256"] = annotations_sha256
        self._file.write(json_line(record))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[(self.source, sha256)] = annotations_sha256
        self.written_now.setdefault(sha256, path)
        self.curated_at.setdefault(sha256, path)
        self._in_shard += 1

    def close(self, finished: bool = True) -> None:
        """End the run: a run that ``finished`` marks the folder finished; one cut short
        by an error or a kill leaves it unfinished (when it wrote anything), which the
        next run resumes. A folder this run made and left nothing in (a refused source,
        no photo found) is taken back, so it is not mistaken for a dataset."""
        try:
            if self._file:
                self._file.close()
            if (
                self.created
                and not self._file
                and not any(p.is_file() and p.name != LOCK_FILE for p in self.dir.rglob("*"))
            ):
                shutil.rmtree(self.dir, ignore_errors=True)
                return
            if finished:
                self._write_manifest(finished=True)
        finally:
            self._lock.close()

    def _write_manifest(self, finished: bool) -> None:
        if finished:
            self.unfinished.discard(self.run)
        else:
            self.unfinished.add(self.run)
        manifest = {
            "format": FORMAT,
            "version": 1,
            "finished": not self.unfinished,
            "unfinished": sorted(self.unfinished),
            "shards": sorted(p.name for p in (self.dir / "shards").glob("*.jsonl")),
            **self.settings,
        }
        write_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=2))


def json_line(entry: dict[str, Any]) -> str:
    """One JSONL line, UTF-8 as written; a file name that is not valid UTF-8 (held as
    surrogate escapes) is written \\u-escaped, which reads back as the same name, so the
    photo is still found by its bytes."""
    line = json.dumps(entry, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(entry)
    return line + "\n"


_OWN = ("format", "version", "finished", "unfinished", "shards")  # the manifest's own keys; the rest are settings


def stats(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The paper's Table 1 columns (pairs, pairs after NMS, unique expressions) and per-source counts."""
    pairs = pairs_nms = segments = 0
    photos: set[str] = set()  # a photo curated by several sources counts once
    unique: set[str] = set()
    by_source: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    listed = [(r["path"], r["sha256"]) for r in read_records(dataset_dir)]
    stale = stale_contents(listed)
    # A photo of several records (sources): a mask, and a pair, they repeat (the same
    # MLLM caption grounded again, say) are one, as training merges them.
    records_of = Counter(sha256 for _, sha256 in listed)
    seen: dict[str, set] = {}  # sha256 -> its masks and (mask, text)s so far, of such photos alone
    for record in read_records(dataset_dir):
        if (record["path"], record["sha256"]) in stale:  # a photo replaced and curated again
            continue
        photos.add(record["sha256"])
        before = seen.setdefault(record["sha256"], set()) if records_of[record["sha256"]] > 1 else None
        repeated = 0
        for seg in record["segments"]:
            mask = seg["rle"]["counts"]
            if before is None or mask not in before:
                segments += 1
            for t in seg["texts"]:
                pair = (mask, t["text"], t["source"], t["kind"])
                if before is not None and pair in before:
                    repeated += 1
                    continue
                pairs_nms += 1
                unique.add(t["text"])
                by_source[t["source"]] += 1
                by_kind[t["kind"]] += 1
            if before is not None:
                before.update([mask, *((mask, t["text"], t["source"], t["kind"]) for t in seg["texts"])])
        pairs += record.get("pairs_before_nms", 0) - repeated  # (a pair repeated was one before NMS too)
    return {
        "images": len(photos),
        "segments": segments,
        "pairs": pairs,
        "pairs_after_nms": pairs_nms,
        "unique_expressions": len(unique),
        "pairs_by_source": dict(by_source),
        "pairs_by_kind": dict(by_kind),
    }
