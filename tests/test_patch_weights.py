"""Paper §3.2: a segment's weight in a patch = its area inside the patch / patch area."""

import numpy as np
import pytest
import torch

from usesearch import patch_weights
from usesearch.models.head import letterbox_weights


def test_half_covered_cell_weighs_one_half():
    masks = np.zeros((1, 8, 8), bool)  # 2x2 grid of 4x4 cells
    masks[0, 0:4, 0:2] = True  # left half of the top-left cell
    w = patch_weights(masks, (2, 2))
    assert w.shape == (1, 4)
    assert torch.allclose(w[0], torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_weights_are_coverage_fractions_per_cell():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 12, 18)) > 0.6
    w = patch_weights(masks, (3, 6)).numpy()
    # Independent reference: average each 4x3 block directly.
    ref = masks.reshape(5, 3, 4, 6, 3).mean(axis=(2, 4)).reshape(5, 18)
    np.testing.assert_allclose(w, ref, atol=1e-6)
    # Weights times cell area add back up to the mask area.
    np.testing.assert_allclose(w.sum(1) * 12, masks.sum((1, 2)), rtol=1e-5)


def test_sides_must_be_grid_multiples():
    with pytest.raises(ValueError, match="multiple"):
        patch_weights(np.ones((1, 10, 10), bool), (3, 3))


def test_empty_mask_is_a_clear_error_not_nan():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        patch_weights(masks, (2, 2))


def test_letterbox_weights_leave_padding_cells_uncovered():
    # A 40x80 image letterboxed into a square: rows past the image are padding.
    masks = np.ones((1, 40, 80), bool)
    w = letterbox_weights(masks, grid=4).reshape(4, 4)
    assert torch.allclose(w[:2], torch.ones(2, 4))
    assert torch.allclose(w[2:], torch.zeros(2, 4))


def test_letterbox_weights_match_patch_weights_of_padded_mask():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 24, 16)) > 0.5
    padded = np.zeros((3, 24, 24), bool)
    padded[:, :, :16] = masks
    np.testing.assert_allclose(letterbox_weights(masks, 6), patch_weights(padded, (6, 6)), atol=1e-6)


def test_fractional_cells_keep_tiny_masks():
    # 10 px image on a 4-cell grid: cells are 2.5 px; one pixel still gets weight.
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 2, 2] = True
    w = letterbox_weights(masks, 4)
    assert w.sum() > 0
    assert torch.isclose(w.sum() * 2.5 * 2.5, torch.tensor(1.0))


def _random_masks(rng, n, h, w):
    """Rectangles, speckle, full and single-pixel masks: runs that cross columns, runs
    of one pixel, a run to the image's last pixel."""
    masks = rng.random((n, h, w)) < rng.random((n, 1, 1))
    masks[0] = True
    masks[1] = False
    masks[1, h - 1, w - 1] = True
    masks[2] = False
    masks[2, h // 3 :, : w // 2] = True
    return masks


@pytest.mark.parametrize("n,h,w", [(3, 1, 1), (2, 1, 7), (2, 9, 1), (4, 23, 19), (2, 300, 401), (2, 0, 5)])
def test_a_stack_of_masks_is_coded_as_pycocotools_codes_each_mask(n, h, w):
    """``encode_stack`` transposes the stack into pycocotools' column-major layout
    itself (OpenCV, mask by mask): each RLE must be pycocotools' for that mask alone,
    for bool or 0/1 arrays, tensors and strided views."""
    from pycocotools import mask as mask_utils

    from usesearch.masks import rle

    masks = np.random.default_rng(h * w).random((n, h, 2 * w)) < 0.4
    if h and w:
        masks[0, 0, 0], masks[-1, -1, -1] = True, False
    each = [rle.to_str(mask_utils.encode(np.asfortranarray(m[:, ::2].astype(np.uint8)))) for m in masks]
    assert [r["size"] for r in each] == [[h, w]] * n
    assert rle.encode_stack(np.ascontiguousarray(masks[:, :, ::2])) == each
    assert rle.encode_stack(masks[:, :, ::2].astype(np.uint8) * 7) == each  # any non-zero is in the mask
    assert rle.encode_stack(torch.from_numpy(masks)[:, :, ::2]) == each
    assert rle.encode_stack(torch.from_numpy(np.ascontiguousarray(masks[:, :, ::2]))) == each


def test_rle_runs_are_the_masks_pixels():
    from usesearch.masks import rle

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 3), (40, 65), (300, 200)]:
        for mask in _random_masks(rng, 6, h, w):
            starts, ends = rle.runs(rle.encode(mask))
            flat = np.zeros(h * w, bool)
            for s, e in zip(starts, ends):
                flat[s:e] = True
            np.testing.assert_array_equal(flat.reshape(w, h).T, mask)  # COCO's column-major order
            assert len(starts) == len(ends) and np.all(starts < ends)


def test_runs_found_while_encoding_on_the_device_are_those_the_counts_give_and_held_within_a_bound(monkeypatch):
    """``encode_runs`` (the GPU path) remembers each mask's runs so that pooling, right
    after, need not parse the counts again: the same runs, read-only, the oldest let go."""
    from collections import OrderedDict

    from usesearch.masks import rle

    monkeypatch.setattr(rle, "_runs_memo", OrderedDict())
    monkeypatch.setattr(rle, "_runs_held", [0])
    rng = np.random.default_rng(3)
    masks = _random_masks(rng, 12, 40, 65)
    masks[0], masks[1] = True, False  # a run from the first pixel to the last; no run
    masks[2] = rng.random((40, 65)) < 0.5  # noise: many runs
    rles = rle.encode_runs(torch.from_numpy(masks))
    remembered = [rle.runs(r) for r in rles]
    key = (40, 65, rles[2]["counts"])
    assert remembered[2][0] is rle._runs_memo[key][0]  # served from memory, not parsed
    with pytest.raises(ValueError):
        remembered[2][0][0] = 1  # shared: nobody may change it
    rle._runs_memo.clear()
    parsed = [rle.runs(r) for r in rles]
    assert [len(s) for s, _ in remembered][:2] == [1, 0] and len(remembered[2][0]) > 100
    for (starts, ends), (parsed_starts, parsed_ends) in zip(remembered, parsed):
        np.testing.assert_array_equal(starts, parsed_starts)
        np.testing.assert_array_equal(ends, parsed_ends)
        assert starts.dtype == parsed_starts.dtype == np.int64
    monkeypatch.setattr(rle, "RUNS_REMEMBERED", len(parsed[2][0]) + rle.ENTRY_RUNS + 5)
    rle._runs_held[0] = 0
    rle.encode_runs(torch.from_numpy(masks[2:4]))  # the noise, then a mask of few runs
    rle.encode_runs(torch.from_numpy(masks[4:5]))
    assert rle._runs_held[0] <= rle.RUNS_REMEMBERED
    assert (40, 65, rles[4]["counts"]) in rle._runs_memo and key not in rle._runs_memo  # the oldest went first


@pytest.mark.parametrize("hw,grid", [((97, 131), 16), ((256, 256), 16), ((61, 20), 24)])
def test_weights_from_rle_runs_equal_weights_from_dense_masks(hw, grid):
    from usesearch.masks import rle

    rng = np.random.default_rng(1)
    masks = _random_masks(rng, 8, *hw)
    dense = letterbox_weights(masks, grid)
    from_runs = letterbox_weights(rle.RleStack(rle.encode_stack(masks), hw), grid)
    assert from_runs.shape == dense.shape and from_runs.dtype == torch.float32
    torch.testing.assert_close(from_runs, dense, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        letterbox_weights(rle.RleStack(rle.encode_stack(np.zeros((1, *hw), bool)), hw), grid)


@pytest.mark.parametrize("hw,grid,per_chunk", [((97, 131), 16, 1 << 18), ((256, 200), 24, 300), ((61, 20), 24, 1)])
def test_weights_from_rle_runs_on_a_device_equal_the_hosts(hw, grid, per_chunk, monkeypatch):
    """On a GPU the runs go up and the weights are a few batched operations
    (``rle_cell_coverage_on``); here on the CPU device, they equal the host's loop over
    the masks and the dense masks' coverage, in chunks of masks too."""
    from usesearch.masks import rle
    from usesearch.models import head

    monkeypatch.setattr(head, "RUNS_PER_CHUNK", per_chunk)
    rng = np.random.default_rng(2)
    masks = _random_masks(rng, 9, *hw)
    masks[0] = rng.random(hw) < 0.5  # noise: a mask of many runs beside masks of few
    stack = rle.RleStack(rle.encode_stack(masks), hw)
    cell = max(hw) / grid
    on_device = head.rle_cell_coverage_on(torch.device("cpu"), stack, (grid, grid), (cell, cell))
    on_host = head.rle_cell_coverage(stack, (grid, grid), (cell, cell))
    torch.testing.assert_close(on_device, on_host, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(on_device, letterbox_weights(masks, grid), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        empty = rle.RleStack(rle.encode_stack(np.zeros((1, *hw), bool)), hw)
        head.rle_cell_coverage_on(torch.device("cpu"), empty, (grid, grid), (cell, cell))


def test_what_every_photo_of_a_shape_shares_goes_to_the_device_once():
    """A photo's normalisation stats and its shape's prefix sums are made on the device
    once and reused (each made anew was a copy to a card, a photo at a time, and a copy
    from pageable memory waits for the stream); the same numbers."""
    from usesearch.masks import rle
    from usesearch.models import head, inputs
    from usesearch.models.inputs import normalize

    inputs._channel_stats.cache_clear()
    head._prefix_sums_on.cache_clear()
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    mean, std = [0.5, 0.4, 0.3], (0.2, 0.25, 0.3)  # (a list too: taken as its tuple)
    first, second = normalize(rgb, mean, std), normalize(rgb, tuple(mean), std)
    expected = (
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]
    ) / torch.tensor(std)[:, None, None]
    assert torch.equal(first, second) and torch.allclose(first, expected)
    assert inputs._channel_stats.cache_info().misses == 1 and inputs._channel_stats.cache_info().hits == 1
    masks = np.zeros((3, 24, 32), bool)
    masks[:, 4:20, 6:30] = True
    stack = rle.RleStack(rle.encode_stack(masks), (24, 32))
    weights = [head.rle_cell_coverage_on(torch.device("cpu"), stack, (3, 4), (8.0, 8.0)) for _ in range(2)]
    assert torch.equal(weights[0], weights[1]) and head._prefix_sums_on.cache_info().misses == 1
