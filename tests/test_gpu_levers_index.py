"""The levers of the GPU path in an index run, checked on the CPU against what they
replace: per-stage timings, photos read ahead and committed in walk order, the models a
group ahead of the commits (side streams forced on), ``--compile`` (block by block, the
crop tower's any number of crops), a failed masker batch retried photo by photo."""

import shutil
import threading
import types

import numpy as np
import pytest

from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.io.files import walk


def test_an_index_run_reports_the_time_of_every_stage(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    options = IndexOptions(
        preset="tiny",
        masker="sam",
        device="cpu",
        masker_options={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0},
    )
    report = index_paths([photos], tmp_path / "db", options)
    expected = {
        "read + hash (workers)",
        "decode (workers)",
        "waiting for photos",
        "SAM encoder",
        "SAM encoder ahead (own thread)",
        "SAM decoder",
        "SAM post-processing",
        "RLE",
        "backbones",
        "backbones beside SAM (own thread)",
        "pooling",
        "store",
        "FAISS",
    }
    assert set(report.stages) == expected
    assert all(seconds >= 0 for seconds in report.stages.values())
    assert report.stages["SAM encoder"] > 0 and report.stages["backbones"] > 0 and report.stages["store"] > 0
    in_loop = sum(v for k, v in report.stages.items() if "(" not in k)  # not the workers' nor the embedder's thread
    assert in_loop <= report.loop_seconds
    assert report.masker_forward_seconds == pytest.approx(report.stages["SAM encoder"] + report.stages["SAM decoder"])


def test_photos_read_ahead_are_committed_in_walk_order_and_copies_once(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee", "rocket"))
    shutil.copy(photos / "astronaut.png", photos / "copy-of-astronaut.png")
    (photos / "broken.png").write_bytes(b"not a png")
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    assert (report.done, report.skipped, report.failed) == (4, 1, 1)
    index = SegmentIndex.open(tmp_path / "db", device="cpu")
    committed = [path for _, _, path in sorted(index.store.image_files())]
    walked = [found.path for found in walk([photos])]
    assert len(committed) >= 4 and committed == [p for p in walked if p in committed]
    assert "copy-of-astronaut.png" not in " ".join(committed)  # the copy came later in the walk: skipped


def test_compile_traces_the_models_and_changes_no_segment(tmp_path, monkeypatch):
    """``--compile`` through TorchDynamo (the eager backend here: inductor's C++
    build takes minutes on two cores); the index equals an uncompiled one."""
    from tests.helpers import segment_table
    from usesearch.masks import sam_compile

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    options = dict(
        preset="tiny",
        masker="sam",
        device="cpu",
        masker_options={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0},
    )
    plain = index_paths([photos], tmp_path / "plain", IndexOptions(**options))
    compiled = index_paths([photos], tmp_path / "compiled", IndexOptions(**options, compile=True))
    assert plain.segments == compiled.segments > 0
    assert segment_table(tmp_path / "plain") == segment_table(tmp_path / "compiled")


def test_a_compiled_crop_tower_takes_any_number_of_crops_without_compiling_each(monkeypatch):
    """``--compile --embedder crop``: a photo's crops are one batch of any size; with
    static shapes each size compiled anew until torch's limit (8), after which the rest
    ran uncompiled. Shapes go dynamic after the second size; the embeddings are unchanged."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from usesearch.indexer.pipeline import load_models
    from usesearch.masks import sam_compile

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    options = dict(preset="tiny", embedder="crop", masker="felzenszwalb", device="cpu")
    compiled, _ = load_models(IndexOptions(**options, compile=True))
    plain, _ = load_models(IndexOptions(**options))
    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    masks = np.zeros((8, 96, 128), bool)
    for i in range(8):
        masks[i, 10 * i : 10 * i + 20, 5 * i : 5 * i + 40] = True
    for n in range(1, 9):
        np.testing.assert_allclose(
            compiled.embed_segments(rgb, masks[:n]), plain.embed_segments(rgb, masks[:n]), atol=1e-5
        )
    assert counters["stats"]["unique_graphs"] <= 2  # 8 sizes: static shapes compiled 8 graphs
    torch._dynamo.reset()


def test_a_known_path_changed_to_content_met_earlier_in_the_run_is_that_photos_copy(tmp_path):
    """Its old pixels' segments go, and it is not embedded a second time (both paths
    were, and every search found the photo twice): a copy of the one met earlier."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    # A new file earlier in the walk, and the known chelsea.png overwritten, both with astronaut's pixels.
    write_photos(tmp_path / "astro", ("astronaut",))
    shutil.copy(tmp_path / "astro" / "astronaut.png", photos / "a-new.png")
    shutil.copy(tmp_path / "astro" / "astronaut.png", photos / "chelsea.png")
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    assert (report.done, report.skipped) == (1, 2)
    assert [(c.rsplit("/", 1)[-1], h.rsplit("/", 1)[-1]) for c, h in report.copies] == [("chelsea.png", "a-new.png")]
    store = SegmentIndex.open(tmp_path / "db", device="cpu").store
    indexed = sorted(path.rsplit("/", 1)[-1] for _, _, path in store.image_files())
    assert indexed == ["a-new.png", "coffee.png"]  # the old pixels' segments are gone, with their record


def test_photos_past_pils_limit_decode_in_parallel_threads_without_leaving_it_changed(monkeypatch):
    import io
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from usesearch.io.files import decode

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # these 40x40 photos are past it, within ours
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(buffer, format="PNG")
    filters = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda i: decode(buffer.getvalue(), f"{i}.png", max_pixels=10_000).shape, range(400)))
    assert shapes == [(40, 40, 3)] * 400
    assert Image.MAX_IMAGE_PIXELS == 1000 and warnings.filters == filters


@pytest.mark.parametrize("side_streams", [False, True], ids=["in line", "side streams"])
def test_models_a_group_ahead_of_the_commits_give_the_same_index(tmp_path, monkeypatch, side_streams):
    """On a GPU the models run in a thread one group ahead of the commits, SAM's
    encoder starts on each group as it is queued and the backbones run beside SAM
    (side streams); forced on here, the index equals the in-line one, a corrupt photo
    is recorded (as soon as it is read), and the indexed photos are committed in walk
    order."""
    import usesearch.indexer.pipeline
    import usesearch.models.ahead
    from tests.helpers import segment_table
    from usesearch import side_stream
    from usesearch.indexer.compute import ModelStage
    from usesearch.masks.amg_encoding import SamEncoding
    from usesearch.models.ahead import BackbonesAhead

    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "immunohistochemistry", "coins")
    photos = write_photos(tmp_path / "photos", names)  # four groups of two
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    options = dict(
        preset="tiny",
        masker="sam",
        device="cpu",
        masker_options={
            "points_per_side": 4,
            "pred_iou_thresh": -10.0,
            "stability_score_thresh": -10.0,
            "encoder_batch": 2,
        },
    )
    inline = index_paths([photos], tmp_path / "inline", IndexOptions(**options))
    threads = []
    monkeypatch.setattr(
        usesearch.indexer.pipeline,
        "ModelStage",
        lambda model, masker, overlap: threads.append(1) or ModelStage(model, masker, overlap=True),
    )
    monkeypatch.setattr(side_stream, "used_on", lambda device: side_streams)
    monkeypatch.setattr(usesearch.models.ahead, "batches_backbones", lambda device: side_streams)  # as a GPU's
    ran_in: dict[str, list] = {"encoder": [], "towers": []}  # the thread of each call, in order
    for name, cls, method in (("encoder", SamEncoding, "_encode"), ("towers", BackbonesAhead, "_towers")):

        def spy(self, *args, real=getattr(cls, method), name=name):
            ran_in[name].append(threading.current_thread().name[:16])
            return real(self, *args)

        monkeypatch.setattr(cls, method, spy)
    ahead = index_paths([photos], tmp_path / "ahead", IndexOptions(**options))
    beside = [ahead.stages[f"{s} (own thread)"] > 0 for s in ("SAM encoder ahead", "backbones beside SAM")]
    assert beside == [side_streams, side_streams]
    models = "usesearch-models"
    if side_streams:
        # The first group of its size in line (compiled there: one thread compiles); each
        # group encoded once, none again in line. The third group is queued after the
        # first one's commit, so by then aside for sure; the second may be queued before.
        encoder, towers = ran_in["encoder"], ran_in["towers"]
        assert len(encoder) == 4 and encoder[0] == models and encoder[2:] == ["usesearch-encode"] * 2
        assert towers == [models] + ["usesearch-beside"] * 3  # each group's, as SAM begins on it
    else:
        assert ran_in == {"encoder": [models] * 4, "towers": [models] * 8}  # (a CPU's: a photo a call)
    assert threads and (ahead.done, ahead.failed, ahead.segments) == (inline.done, inline.failed, inline.segments) == (
        8,
        1,
        inline.segments,
    )
    assert segment_table(tmp_path / "ahead") == segment_table(tmp_path / "inline")
    store = SegmentIndex.open(tmp_path / "ahead", device="cpu").store
    failed = {record.path for record in store.failures()}
    committed = [path for _, _, path in sorted(store.image_files()) if path not in failed]
    assert len(committed) == 8 and committed == [found.path for found in walk([photos]) if found.path in committed]


def test_a_photo_the_masker_fails_on_is_masked_once_and_a_failed_batch_photo_by_photo():
    """A group's masker call that fails is retried photo by photo (one photo's failure
    is its own); a photo alone that fails is not masked a second time (an out-of-memory
    pass on a huge photo twice over)."""
    from usesearch.indexer.compute import compute_photos
    from usesearch.indexer.options import IndexReport

    calls = []

    class Masker:
        def __call__(self, rgb, path):
            calls.append(path)
            if path == "bad":
                raise RuntimeError("CUDA out of memory")
            return []

        def batch(self, rgbs, paths):
            calls.append(tuple(paths))
            raise RuntimeError("CUDA out of memory")

    model = types.SimpleNamespace(embed_segments=lambda rgb, masks: np.zeros((0, 4), np.float32))
    rgb = np.zeros((4, 4, 3), np.uint8)
    alone = compute_photos([rgb], ["bad"], model, Masker(), IndexReport())
    assert calls == ["bad"] and isinstance(alone[0], RuntimeError)
    calls.clear()
    group = compute_photos([rgb, rgb], ["good", "bad"], model, Masker(), IndexReport())
    assert calls == [("good", "bad"), "good", "bad"]
    assert group[0] == ([], group[0][1]) and isinstance(group[1], RuntimeError)


def test_compile_compiles_each_kind_of_block_once_the_decoder_whole_and_scores_every_size(monkeypatch):
    """``--compile`` compiles the towers block by block (torch's regional compilation):
    blocks of one kind reuse one graph, so compiling does not grow with depth (the
    whole ViT-H encoder, compiled at once, had not finished in 170 s on an H200)."""
    from functools import partial

    import torch._dynamo
    from segment_anything.modeling import ImageEncoderViT
    from torch._dynamo.utils import counters

    from usesearch.indexer.pipeline import load_models
    from usesearch.masks import sam_compile
    from usesearch.masks.sam_compile import CompiledDecoder, compile_modules
    from usesearch.masks.sam_fast import use_sdpa

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    encoder = ImageEncoderViT(
        img_size=64, patch_size=8, embed_dim=16, depth=6, num_heads=2, out_chans=8, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=3, global_attn_indexes=(2, 5),
    ).eval()  # fmt: skip
    holder = types.SimpleNamespace(image_encoder=encoder)
    use_sdpa(holder)  # type: ignore[arg-type]  (as load_sam hands SAM out: each block's attention re-bound)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(x)
        compile_modules(encoder)
        got = encoder(x)
    torch.testing.assert_close(got, expected)
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in encoder.blocks)
    assert getattr(encoder, "_compiled_call_impl", None) is None
    assert counters["stats"]["unique_graphs"] == 2  # six blocks: windowed and global, one graph each
    with torch.no_grad():  # a run's last group: 1-4 photos a call, then bf16 (a GPU's)
        for batch in (2, 3, 4):
            encoder(torch.randn(batch, 3, 64, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(torch.randn(3, 3, 64, 64))
    # A second size compiled once for any size: static shapes gave 8 graphs, torch's
    # limit for all of one kind's blocks, and the next case ran uncompiled.
    assert counters["stats"]["unique_graphs"] <= 6

    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", compile=True))
    generator = masker.generator
    assert all(
        getattr(block, "_compiled_call_impl", None) is not None for block in generator.model.image_encoder.blocks
    )
    assert isinstance(generator.decoder, CompiledDecoder) and generator.decoder.decoder is generator.model.mask_decoder
    # Candidates scored compiled at every size from the first photo (a CPU's default: large ones alone)
    assert generator.scoring.compiled is not None and generator.scoring.compiled_any_size
    torch._dynamo.reset()
