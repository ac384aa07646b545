"""Helpers the test modules share (imported as ``tests.helpers``); the fixtures are in
conftest.py, which pytest loads itself."""

import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# -- shared by the index, serving and export tests --------------------------------------
OPTS = dict(preset="tiny", masker="felzenszwalb", masker_options={"max_masks": 8})


def write_photos(folder, names=("astronaut", "chelsea", "coffee", "rocket")):
    """Small real photos (scikit-image's), every other one in a subfolder ``sub``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sub = folder / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96))
        image.save(sub / f"{name}.png")
    return folder


def segment_table(db, db_url=None):
    """(image, bbox, area, rle) per segment: what an index holds, independent of ids."""
    from usesearch.indexer import SegmentIndex

    ix = SegmentIndex.open(db, db_url=db_url)
    rows = ix.store.rows(ix.store.segment_ids())
    ix.close()
    return sorted((os.path.basename(r.image_path), r.bbox, r.area, r.rle_counts) for r in rows.values())


def assert_consistent(db, db_url=None):
    """The vector file on disk holds exactly the committed segments, each once."""
    import faiss

    from usesearch.indexer import SegmentIndex
    from usesearch.indexer.folder import FAISS_FILE
    from usesearch.indexer.index_kinds import index_ids
    from usesearch.indexer.vector_files import shard_files

    ix = SegmentIndex.open(db, db_url=db_url)
    on_disk = np.concatenate([index_ids(faiss.read_index(str(f))) for f in shard_files(db / FAISS_FILE)])
    committed = np.sort(ix.store.segment_ids())
    assert len(np.unique(committed)) == len(committed)
    np.testing.assert_array_equal(np.sort(on_disk), committed)
    ix.close()


# -- kill -9 tests: run a step in another process, kill it when it is partly done --------
def run_python(code: str, *args, **popen):
    """``python -c code args...`` in another process, importing this checkout."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], env={**os.environ, "PYTHONPATH": os.getcwd()}, **popen
    )


def index_on_ray_in_a_process(
    patch: str, photos, db, *flags: str, masker: str = "felzenszwalb"
) -> tuple[int, str, str]:
    """``usesearch index PHOTOS --db DB --ray`` (tiny preset, ``masker``, one worker)
    in another process, after the Python ``patch`` ran there: exit code, stdout, stderr."""
    import subprocess

    code = (
        f"import sys\n{patch}\n"
        "from usesearch.cli.app import main\n"
        "sys.argv = ['usesearch', 'index', sys.argv[1], '--db', sys.argv[2], '--preset', 'tiny', '--ray',\n"
        f"            '--masker', {masker!r}, '--workers', '1', *sys.argv[3:]]\n"
        "main()\n"
    )
    proc = run_python(code, photos, db, *flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def sqlite_count(db_file, sql: str):
    """One count from an index's SQLite file while another process writes it (None
    while it cannot be read)."""
    import sqlite3

    try:
        with sqlite3.connect(db_file, timeout=5) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return None


def kill_when(proc, probe, reached, start, timeout: float = 120, every: float = 0.05):
    """Poll ``probe()`` while ``proc`` runs; once ``reached(value)``, kill it with
    SIGKILL. Returns the last value read (``start`` until one is)."""
    import signal
    import time

    deadline, value = time.time() + timeout, start
    while time.time() < deadline and proc.poll() is None and not reached(value):
        time.sleep(every)
        read = probe()
        value = value if read is None else read
    assert proc.poll() is None, "the process finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return value


# -- shared by the mask generator's tests ------------------------------------------
LOW = dict(pred_iou_thresh=-10.0, stability_score_thresh=-10.0)  # keep (nearly) every proposal


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# -- shared by the command-line tests ---------------------------------------------------
def parsed(args: list[str]) -> tuple[str, dict]:
    """(command name, the parameters its function receives) for a usesearch command
    line, as click parses it, without running the command."""
    import typer

    from usesearch.cli.app import app

    command, args = typer.main.get_command(app), list(args)
    while hasattr(command, "get_command"):  # a group: down to the command named next
        name = args.pop(0)
        command = command.get_command(None, name)
    return str(command.name), dict(command.make_context(name, args).params)


@contextmanager
def serving(index):
    """The web app over ``index`` on a free loopback port, in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from usesearch.indexer.web import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(10)


def blob_sam(device: str = "cpu"):
    """The seeded tiny SAM, with its mask decoder's logits replaced by blobs of three
    sizes around each point prompt (plus the decoder's own output as texture). With
    random weights every prompt gives nearly the whole image, so NMS, crop-edge and
    clean-up decisions would never be tested; blobs make them real. Both generators
    call the same modules, so the comparison is unaffected. (A function, not only a
    fixture: ``benchmarks/gpu_check.sh`` builds it on a GPU, where pytest is not installed.)"""
    import copy

    import torch

    import usesearch
    from usesearch.masks.sam import load_sam

    model = copy.deepcopy(load_sam(usesearch.get_preset("tiny").sam, "tiny")).to(device)
    seen = {}
    encode_prompts, decode = model.prompt_encoder.forward, model.mask_decoder.forward

    def prompt_encoder(points, boxes, masks):
        seen["points"] = points[0]  # [B, 1, 2] in the model's input frame
        return encode_prompts(points, boxes, masks)

    def mask_decoder(**kwargs):
        low_res, iou = decode(**kwargs)
        size = low_res.shape[-1]
        cell = model.image_encoder.img_size / size
        centres = (torch.arange(size, dtype=torch.float32, device=low_res.device) + 0.5) * cell
        px, py = seen["points"][:, 0, 0].float(), seen["points"][:, 0, 1].float()
        dist = (
            (centres[None, None, :] - px[:, None, None]) ** 2 + (centres[None, :, None] - py[:, None, None]) ** 2
        ).sqrt()
        radii = torch.tensor([18.0, 40.0, 75.0], device=low_res.device)
        blobs = (radii[None, :, None, None] - dist[:, None]) / 6 + 0.5 * low_res / low_res.abs().amax().clamp(min=1e-6)
        return blobs.to(low_res.dtype), iou

    model.prompt_encoder.forward = prompt_encoder
    model.mask_decoder.forward = mask_decoder
    return model


# bfloat16's tolerance (the GPU's autocast) against segment-anything's float32 masks:
# at least this share of stock's masks has one of ours at IoU >= BF16_IOU, and the
# counts differ by at most BF16_COUNT of stock's. (Seen on the blob SAM: 96.9-100% at
# IoU >= 0.95, counts within 1 of ~150; bf16's 8-bit mantissa moves logits near the
# threshold and ties scores that NMS then orders differently.)
BF16_MATCHED, BF16_IOU, BF16_COUNT = 0.95, 0.95, 0.02


def bf16_agreement(stock: list[dict], ours: list) -> tuple[float, float]:
    """(share of stock's masks that one of ours matches at IoU >= BF16_IOU, relative
    difference of the counts): ``stock`` is segment-anything's records, ``ours`` our
    generator's."""
    from pycocotools import mask as mask_utils

    masks = [mask_utils.decode({"size": r.rle["size"], "counts": r.rle["counts"].encode()}).astype(bool) for r in ours]
    matched = [any(mask_iou(m, s["segmentation"]) >= BF16_IOU for m in masks) for s in stock]
    return float(np.mean(matched)), abs(len(ours) - len(stock)) / max(1, len(stock))


def allocated_shapes(source: str) -> list[list[str]]:
    """The size of every buffer that inductor's generated code allocates, as a list of
    (symbolic) dimensions: ``empty_strided_cpu((s0, min(s1, 4*s2)), ...)`` -> [s0, min(...)]
    (``empty_strided_cuda`` alike: ``benchmarks/candidate_scores.py`` reads a GPU's)."""
    shapes = []
    for match in re.finditer(r"empty_strided_[a-z]+\(\(", source):
        depth, dims, current = 0, [], ""
        for char in source[match.end() :]:
            if char == ")" and depth == 0:
                break
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                dims.append(current.strip())
                current = ""
            else:
                current += char
        dims.append(current.strip())
        shapes.append([dim for dim in dims if dim])
    return shapes


def allocated_numels(source: str) -> list[int]:
    """The element count of every buffer in inductor's generated code (``allocated_sizes``)."""
    return [math.prod(sizes) for sizes in allocated_sizes(source)]


def allocated_sizes(source: str) -> list[tuple[int, ...]]:
    """The size of every buffer in inductor's generated code, its symbolic dimensions
    evaluated at the values the code was compiled with (``sN = argK_1`` in ``call``,
    ``argK_1 = value`` in ``get_args``)."""
    values = {name: int(value) for name, value in re.findall(r"^\s*(arg\d+_1) = (\d+)$", source, re.M)}
    symbols = {sym: values[arg] for sym, arg in re.findall(r"^\s*(s\d+) = (arg\d+_1)$", source, re.M) if arg in values}
    # sizes are integer arithmetic
    return [
        tuple(int(eval(dim, {"min": min, "max": max}, symbols)) for dim in shape) for shape in allocated_shapes(source)
    ]


def wrapped_out_of_memory() -> RuntimeError:
    """An out-of-memory error as dynamo and inductor hand one on: inside their own."""
    import torch

    try:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    except torch.cuda.OutOfMemoryError as oom:
        wrapped = RuntimeError("inductor: failed while compiling")
        wrapped.__cause__ = oom
        return wrapped


# -- shared by the audit tests -----------------------------------------------------------
def audit_cli(db, *more):
    """``usesearch audit --db DB`` with its report beside the index (``DB/../report``):
    each list's JSON; what it printed in ``audit_cli.output``."""
    import json

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.indexer.audit import LISTS

    result = CliRunner().invoke(app, ["audit", "--db", str(db), "--report-dir", str(db.parent / "report"), *more])
    assert result.exit_code == 0, result.output
    audit_cli.output = result.output  # type: ignore[attr-defined]
    return {kind: json.loads((db.parent / "report" / f"{kind}.json").read_text()) for kind in LISTS}


def curated_segment(hw, text):
    """A curated segment: a 15 x 15 square of a photo of ``hw``, with one region text."""
    from usesearch.curation.records import Segment, TextRef
    from usesearch.masks import rle

    mask = np.zeros(hw, bool)
    mask[5:20, 5:20] = True
    encoded = rle.encode(mask)
    return Segment(
        rle=encoded, bbox=tuple(rle.bbox(encoded)), area=rle.area(encoded), texts=[TextRef(text, "vg", "region")]
    )


def one_annotation_coco(path, file_name: str, hw: tuple[int, int], category: str, square: tuple[int, int]) -> Path:
    """A COCO instances file of one photo (``hw``) with one annotation: the square from
    ``square[0]`` to ``square[1]`` on both axes, of class ``category``."""
    import json

    lo, hi = square
    coco = {
        "categories": [{"id": 1, "name": category}],
        "images": [{"id": 1, "file_name": file_name, "height": hw[0], "width": hw[1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[lo, lo, hi, lo, hi, hi, lo, hi]]}],
    }
    Path(path).write_text(json.dumps(coco))
    return Path(path)


def settle(folder: Path) -> None:
    """Wait until every file under ``folder`` is older than ``RACY_NS``: Ray's hash tasks
    (other processes, where a test's patch of it does not reach) keep no stat of a file
    changed more recently, and their workers, which import no model library and are
    kept between runs, start within it. Called before a test patches ``RACY_NS``."""
    from usesearch.indexer.known_images import RACY_NS

    newest = max(max(f.stat().st_mtime_ns, f.stat().st_ctime_ns) for f in folder.rglob("*") if f.is_file())
    wait_s = (newest + RACY_NS - time.time_ns()) / 1e9
    if wait_s > 0:
        time.sleep(wait_s + 0.1)


HEAVY = ("torch", "open_clip", "timm", "faiss")  # the libraries a refusal must not wait for


def invoke_in_a_fresh_python(*commands: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """Each command line through the CLI (``CliRunner``) in a new Python: each one's
    (exit code, output, its whitespace joined), and which of ``HEAVY`` were imported by
    then: what a refusal made before any model library loads must leave at []."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from usesearch.cli.app import app\n"
        f"done = [CliRunner().invoke(app, c) for c in {list(commands)!r}]\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps([[[d.exit_code, ' '.join(d.output.split())] for d in done], heavy]))\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    said, heavy = json.loads(ran.stdout)
    return [(code, output) for code, output in said], heavy
