"""The levers of the GPU path, checked on the CPU against what they replace: SDPA
attention in SAM's image encoder (segment-anything's product), run-length coding on
the masks' device (pycocotools' RLE), prompt batches sized to the card, the
benchmark's mask count, per-stage timings, and photos read ahead of the models."""

import copy
import shutil
import threading
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling.image_encoder import Attention, Block
from segment_anything.modeling.transformer import Attention as DecoderAttention

from tests.helpers import LOW, OPTS, mask_iou, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.io.files import walk
from usesearch.masks import rle, sam_fast
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.amg_utils import prompt_batch, upscale_to_input
from usesearch.masks.sam_fast import _sdpa_forward


def stock_sam(model):
    """A copy that runs segment-anything's own code again (encoder attention, decoder)."""
    model = copy.deepcopy(model)
    for module in model.image_encoder.modules():
        if isinstance(module, Attention) and "forward" in vars(module):
            del module.forward
    decoder = vars(model.mask_decoder)
    for name in ("predict_masks", "takes_upscale_above"):  # (no generator passes it the gate, then)
        decoder.pop(name, None)
    if getattr(decoder.get("forward"), "__func__", None) is sam_fast._forward:  # (not the blob SAM's wrapper)
        del decoder["forward"]
    for module in model.mask_decoder.modules():
        if isinstance(module, DecoderAttention):
            vars(module).pop("forward", None)
    return model


def test_relative_positions_indexed_on_their_device_are_the_librarys_rows():
    """The encoder's relative-position rows gathered by indices made where the table
    lies (the library's come from a CPU ``arange``: a blocking copy to a card in every
    attention block): the same rows, for a window, the global grid and a table of
    another length (resized by the library)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    for size, length in ((14, 27), (64, 127), (64, 27)):
        table = torch.randn(length, 80)
        assert torch.equal(sam_fast._rel_pos(size, table), get_rel_pos(size, size, table))


@pytest.mark.parametrize("window", [0, 14], ids=["global-64x64", "windowed-padded"])
def test_sdpa_attention_gives_segment_anythings_block_output(window):
    torch.manual_seed(0)
    block = Block(
        dim=64, num_heads=4, use_rel_pos=True, window_size=window, input_size=(64, 64) if not window else (14, 14)
    ).eval()
    for p in (block.attn.rel_pos_h, block.attn.rel_pos_w):
        torch.nn.init.normal_(p, std=0.5)  # zero-initialised by default: make the bias matter
    fast = copy.deepcopy(block)
    fast.attn.forward = types.MethodType(_sdpa_forward, fast.attn)
    x = torch.randn(2, 64, 64, 64)
    with torch.no_grad():
        expected, got = block(x), fast(x)
    assert (expected - x).abs().max() > 0.1  # the block does something
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_load_sam_runs_both_levers_and_gives_the_stock_masks(sam, image):
    assert getattr(sam, "sdpa", False) and sum("forward" in vars(m) for m in sam.image_encoder.modules()) == 2
    assert "predict_masks" in vars(sam.mask_decoder)
    stock_model = stock_sam(sam)
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(pixels), stock_model.image_encoder(pixels), atol=1e-5, rtol=1e-5)
    stock = SamAutomaticMaskGenerator(stock_model, points_per_side=8, **LOW).generate(image)
    ours = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    assert len(ours) == len(stock) > 20
    for record, reference in zip(ours, stock):
        assert mask_iou(rle.decode(record.rle), reference["segmentation"]) >= 0.99


@pytest.mark.parametrize(
    "input_size", [(768, 1024), (1024, 683), (1024, 1024), (1, 1024), (1023, 1021), (4, 5), (257, 300), (61, 1024)]
)
def test_upscaling_to_the_input_alone_gives_the_full_canvas_values(input_size):
    """The candidates' logits upscaled to the resized photo alone are the values of the
    whole 1024-px canvas cut to it, bit for bit (so no stability score or box moves)."""
    torch.manual_seed(0)
    low_res = torch.randn(3, 1, 256, 256)
    canvas = torch.nn.functional.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
    got = upscale_to_input(low_res, 1024, input_size)
    assert got.shape[-2:] == input_size
    assert torch.equal(got, canvas[..., : input_size[0], : input_size[1]])


def test_prompt_batches_are_sized_to_the_free_memory():
    h200, card_8gb = 130 * 2**30, 8 * 2**30
    assert prompt_batch(h200, 1024, (768, 1024), 1024) == 1024  # all of a 32x32 grid at once
    assert prompt_batch(card_8gb, 1024, (768, 1024), 1024) == 128
    assert prompt_batch(card_8gb, 1024, (3000, 4000), 1024) == 64  # a 12 MP photo's masks are larger
    assert prompt_batch(2**20, 1024, (768, 1024), 1024) == 64  # never below segment-anything's default
    for free in (2**30, 2**33, 2**37):
        assert prompt_batch(free, 1024, (768, 1024), 1024) % 64 == 0


def test_the_batch_size_changes_no_mask(sam, image):
    one = SamMaskGenerator(sam, points_per_side=8, points_per_batch=64, **LOW).generate(image)
    all_at_once = SamMaskGenerator(sam, points_per_side=8, points_per_batch=1024, **LOW).generate(image)
    assert [r.rle for r in one] == [r.rle for r in all_at_once] and len(one) > 20


def test_a_prompt_batch_that_runs_out_of_gpu_memory_is_halved_for_good(sam, image, monkeypatch):
    """Sized once from the free memory; another process may take some later: the batch
    is halved until it fits (the same masks), not failed for every later photo."""
    monkeypatch.setattr("usesearch.masks.amg.CPU_POINTS_PER_BATCH", 64)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    generator = SamMaskGenerator(sam, points_per_side=8, **LOW)
    real, sizes = generator._batch_candidates, []

    def short_of_memory(features, points, *args):
        sizes.append(len(points))
        if len(points) > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(features, points, *args)

    generator._batch_candidates = short_of_memory
    masks = generator.generate(image)
    assert sizes[:3] == [64, 32, 16] and set(sizes[2:]) == {16}
    fitting = SamMaskGenerator(sam, points_per_side=8, points_per_batch=16, **LOW).generate(image)
    assert [r.rle for r in masks] == [r.rle for r in fitting] and len(masks) > 20
    sizes.clear()
    generator.generate(image)
    assert set(sizes) == {16}  # remembered: the next photo does not run out first


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 23), st.integers(1, 19), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_run_length_coding_on_the_device_equals_pycocotools(n, h, w, density, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) < density
    masks[0, 0, 0], masks[-1, -1, -1] = True, False  # a run at each end of the pixel order
    assert rle.encode_runs(torch.from_numpy(masks)) == rle.encode_stack(masks)


def test_run_length_coding_edge_cases():
    masks = np.zeros((4, 7, 5), bool)
    masks[1] = True
    masks[2, 3, 2] = True
    masks[3, :, 4] = True  # the last column: the last run reaches the end
    assert rle.encode_runs(torch.from_numpy(masks)) == rle.encode_stack(masks)
    assert [rle.area(r) for r in rle.encode_runs(torch.from_numpy(masks))] == [0, 35, 1, 7]


def test_masks_per_photo_keeps_that_many_with_nms_survivors_first(sam, image):
    kept = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    topped = SamMaskGenerator(sam, points_per_side=8, masks_per_photo=len(kept) + 30, **LOW).generate(image)
    assert len(topped) == len(kept) + 30
    assert {r.rle["counts"] for r in kept} <= {r.rle["counts"] for r in topped}
    cut = SamMaskGenerator(sam, points_per_side=8, masks_per_photo=5, **LOW).generate(image)
    assert len(cut) == 5 and {r.rle["counts"] for r in cut} <= {r.rle["counts"] for r in kept}


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


def test_a_known_path_changed_to_content_met_earlier_in_the_run_is_indexed_again(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    # A new file earlier in the walk, and the known chelsea.png overwritten, both with astronaut's pixels.
    write_photos(tmp_path / "astro", ("astronaut",))
    shutil.copy(tmp_path / "astro" / "astronaut.png", photos / "a-new.png")
    shutil.copy(tmp_path / "astro" / "astronaut.png", photos / "chelsea.png")
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    assert (report.done, report.skipped) == (2, 1)
    store = SegmentIndex.open(tmp_path / "db", device="cpu").store
    hashes = {path.rsplit("/", 1)[-1]: store.image(image_id).sha256 for image_id, _, path in store.image_files()}
    assert hashes["chelsea.png"] == hashes["a-new.png"]  # the old pixels' segments are gone


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


def test_the_benchmarks_blob_masks_are_few_runs_and_never_empty_on_the_photo():
    """``index_throughput.py --mask-shape blobs``: random weights' specks become a few
    blobs (runs as real masks have), each with a pixel on the photo's part of SAM's
    canvas, in the decoder's own shape and dtype."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "index_throughput.py"
    spec = importlib.util.spec_from_file_location("index_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    specks = torch.randn(4, 3, 256, 256, dtype=torch.bfloat16)
    blobs = bench.blob_logits(specks, valid=(0.75, 1.0))
    assert blobs.shape == specks.shape and blobs.dtype == specks.dtype
    on_photo = blobs[:, :, :192, :] > 0
    assert on_photo.flatten(2).any(-1).all()  # no mask empty on the photo

    def runs(masks):
        flat = masks.flatten(0, 1).transpose(1, 2).flatten(1)
        return (flat[:, 1:] != flat[:, :-1]).sum(1).float().median()

    assert runs(specks > 0) > 50 * runs(blobs > 0)


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
