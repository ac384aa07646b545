"""The audit's parts on arrays, with no index (``usesearch audit --db`` is test_audit_index.py's):
each list's rule (swapped, outliers, overlooked, badly located, leaks), the ranking kept across
batches, the inverted file that finds near-duplicates, the photo steps, and the planted truth's file."""

import faiss
import numpy as np
import pytest

from usesearch.indexer.audit import leaks, scores, source
from usesearch.indexer.audit.ranked import Ranked
from usesearch.masks import rle


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def box(y0, x0, y1, x1, hw=(40, 40)):
    mask = np.zeros(hw, bool)
    mask[y0:y1, x0:x1] = True
    return rle.encode(mask)


# -- the rules, on arrays ------------------------------------------------------------------
def test_swapped_margin_is_positive_only_where_another_class_wins():
    classes = np.eye(3, 8, dtype=np.float32)
    e = unit([[1, 0.1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]])
    margin, preferred, p_label, p_preferred = scores.swapped(e, np.array([0, 2]), classes)
    assert np.isnan(margin[0]) and margin[1] > 0  # one the model agrees with is no suspect: not listed
    assert preferred.tolist() == [1, 1] and p_preferred[1] > p_label[1]


def test_a_dataset_of_one_class_has_nothing_swapped():
    """With one class no other can be preferred: no margin to rank (each annotation was
    listed as swapped with its own class), and the task's margin says nothing is preferred."""
    from usesearch.tasks.audit import label_margins

    e = np.eye(3, 4, dtype=np.float32)
    margin, preferred, p_label, _ = scores.swapped(e, np.zeros(3, np.int64), np.eye(1, 4, dtype=np.float32))
    assert np.isnan(margin).all() and (preferred == 0).all() and np.allclose(p_label, 1)
    margins, others = label_margins(np.ones((2, 1), np.float32), np.zeros(2, np.int64))
    assert margins.tolist() == [-1.0, -1.0] and others.tolist() == [0, 0]


def test_swapped_hears_the_datasets_own_classes_where_the_text_says_nothing():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(2, 8)))
    e = unit(np.repeat(centres, 5, 0) + 0.05 * rng.normal(size=(10, 8)))
    labels = np.repeat([0, 1], 5)
    labels[0] = 1  # a class-0 look-alike labelled 1
    sums = np.zeros((2, 8))
    np.add.at(sums, labels, e)
    silent = np.zeros((2, 8), np.float32)  # uniform text probabilities: no opinion
    assert np.isnan(scores.swapped(e, labels, silent)[0]).all()  # no class wins: none listed
    margin, preferred, _, _ = scores.swapped(e, labels, silent, sums, np.bincount(labels))
    assert margin[0] > 0.3 and preferred[0] == 0 and np.isnan(margin[1:]).all()


def test_centroid_distance_leaves_the_annotation_out_of_its_class():
    e = unit([[1, 0], [1, 0.05], [0, 1], [1, 0]])
    labels = np.array([0, 0, 0, 1])
    sums = np.zeros((2, 2))
    np.add.at(sums, labels, e)
    counts = np.bincount(labels, minlength=2)
    d = scores.centroid_distances(e, labels, sums, counts)
    assert d[2] > 0.9 > 0.4 > d[0]  # the odd one out, against the other two
    assert d[0] == pytest.approx(1 - e[0] @ unit([e[1] + e[2]])[0], abs=1e-5)  # itself left out
    assert np.isnan(d[3])  # alone in its class: nothing to compare with


def test_overlooked_needs_no_annotation_around_and_a_class_it_resembles():
    annotation = box(0, 0, 20, 20)
    proposals = [box(2, 2, 18, 18), box(25, 25, 38, 38), box(22, 0, 38, 15)]  # inside; free; free
    covered = scores.coverage(scores.overlaps(proposals, [annotation])[0])
    assert covered[0] == 1 and covered[1] == 0
    protos = unit([[1, 0, 0], [0, 1, 0]])
    score, proposed = scores.overlooked(unit([[1, 0, 0], [0, 1, 0.1], [0, 0.2, 1]]) @ protos.T, covered)
    assert np.isnan(score[0]) and score[1] > score[2] and proposed[1] == 1


def test_badly_located_compares_with_the_same_class_proposal():
    truth, shifted = box(0, 0, 20, 20), box(8, 8, 28, 28)
    neighbour = box(8, 8, 28, 28)  # another class's object where the shifted mask lies
    _, ious = scores.overlaps([box(0, 0, 20, 20), neighbour], [truth, shifted])
    assert ious[1, 1] == 1 and ious[1, 0] == pytest.approx(144 / 656)  # the IoU, from the shares and areas
    located, best = scores.badly_located(ious, np.array([0, 0]), [0, 1])
    assert located[0] == pytest.approx(0) and located[1] > 0.5 and best.tolist() == [0, 0]
    alone, _ = scores.badly_located(np.zeros((1, 0)), np.array([0]), [])
    assert np.isnan(alone[0])


def test_ranked_keeps_the_best_whatever_the_batches():
    rng = np.random.default_rng(0)
    values, keys = rng.random(100).round(1), np.arange(100)  # many ties: broken by key
    whole = Ranked(10)
    whole.push(score=values, key=keys)
    pieces = Ranked(10)
    for lo in range(0, 100, 7):
        pieces.push(score=values[lo : lo + 7], key=keys[lo : lo + 7])
    assert [r["key"] for r in whole.rows()] == [r["key"] for r in pieces.rows()]
    assert whole.rows()[0]["score"] == values.max()
    restored = Ranked.from_state(10, "x", whole.state("x"))
    assert restored.rows() == whole.rows()


def test_the_inverted_file_of_a_large_base_finds_the_near_duplicates_exact_search_finds():
    """Past ``EXACT_UP_TO`` base rows the near-duplicates come from an inverted file: the
    pairs it gives are those of exact search."""
    rng = np.random.default_rng(2)
    centers = unit(rng.normal(size=(50, 64)))
    base = unit(centers[rng.integers(0, 50, 20_000)] + 0.15 * rng.normal(size=(20_000, 64)))
    query = unit(centers[rng.integers(0, 50, 2_000)] + 0.15 * rng.normal(size=(2_000, 64)))
    copied = rng.choice(len(base), 200, replace=False)
    query[:200] = unit(base[copied] + 0.02 * rng.normal(size=(200, 64)))  # cosine ~0.99 with their originals
    base_ids, query_ids = np.arange(1, 20_001), np.arange(100_001, 102_001)
    ask = (base_ids, np.ones(20_000, np.int64), query, query_ids, np.zeros(2_000, np.int64))
    exact = leaks.base_index(64, 10)  # (a base this small is searched exactly)
    exact.add_with_ids(base, base_ids)
    index = leaks.base_index(64, len(base))
    assert not index.is_trained and 0 < leaks.training_rows(len(base)) < len(base)
    index.train(base[rng.permutation(len(base))[: leaks.training_rows(len(base))]])
    index.add_with_ids(base, base_ids)
    truth, found = leaks.near_pairs(exact, *ask), leaks.near_pairs(index, *ask)
    assert len(truth) >= 200 and set(map(tuple, found[:, :2].tolist())) == set(map(tuple, truth[:, :2].tolist()))


@pytest.mark.parametrize("rows", [5_001, 20_000, 500_000, 2_000_000])
def test_the_inverted_file_trains_on_what_faiss_asks_for(rows):
    """At least 39 rows a list, faiss's minimum: with 100,000 rows past 400,000 base rows,
    every archive-scale audit printed faiss's "WARNING clustering ... please provide"."""
    lists = faiss.extract_index_ivf(leaks.base_index(8, rows)).nlist
    assert 39 * lists <= leaks.training_rows(rows) <= rows


def test_leaks_exact_and_near_duplicates_across_splits_grouped():
    splits = {1: {"train"}, 2: {"val"}, 3: {"train", "val"}, 4: {"val"}}
    exact = leaks.exact_groups({1: "a", 2: "a", 3: "b", 4: "c"}, splits)
    assert [g["images"] for g in exact] == [[1, 2], [3]]
    rng = np.random.default_rng(1)
    train = unit(rng.normal(size=(6, 16)))
    val = unit(np.vstack([train[:2] + 0.01 * rng.normal(size=(2, 16)), rng.normal(size=(2, 16))]))
    index = leaks.base_index(16, 4)
    val_ids = np.arange(101, 105)
    index.add_with_ids(val, val_ids)
    pairs = leaks.near_pairs(index, val_ids, np.ones(4, np.int64), train, np.arange(1, 7), np.zeros(6, np.int64))
    assert sorted(pairs[:, :2].astype(int).tolist()) == [[1, 101], [2, 102]]
    segment_image = {1: 10, 2: 10, 101: 20, 102: 20}
    same_places = {1: (0, 0, 0.5, 0.5), 2: (0.5, 0.5, 0.4, 0.4), 101: (0, 0, 0.5, 0.5), 102: (0.5, 0.5, 0.4, 0.4)}
    groups = leaks.near_groups(pairs, segment_image, same_places, {10: 2, 20: 2}, {10: {"train"}, 20: {"val"}})
    assert [g["images"] for g in groups] == [[10, 20]] and groups[0]["score"] > 0.97
    # The same objects elsewhere in the photo, or one of three matched: a weaker leak.
    moved = {**same_places, 101: (0.5, 0, 0.5, 0.5)}
    assert leaks.near_groups(pairs, segment_image, moved, {10: 2, 20: 2}, {}, min_score=0)[0]["score"] < 0.55
    weak = leaks.near_groups(pairs, segment_image, same_places, {10: 6, 20: 6}, {}, min_score=0)
    assert weak[0]["score"] < 0.35
    assert leaks.near_groups(pairs, segment_image, same_places, {10: 6, 20: 6}, {}) == []  # below PAIR_MIN_SCORE


def test_photo_steps_end_where_their_segments_pass_the_batch():
    assert source.groups_of_most([1, 2, 3, 4, 5], [3, 3, 9, 1, 1], 6) == [[1, 2], [3], [4, 5]]
    assert source.groups_of_most([], [], 6) == []


def test_the_planted_truth_saved_for_reuse_reads_back_equal_without_pickle(tmp_path):
    from usesearch.indexer.audit.planted import Planted, load_truth, save_truth

    planted = Planted(annotations={"train:1", "val:2"}, proposals={7, 9}, val_photos={2}, copies={3})
    planted.errors["swapped"].add("train:1")
    planted.errors["overlooked"].add(9)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    world = {1: (rgb, [(5, 0, "train")], [7, 9])}
    save_truth(tmp_path / "truth.npz", planted, world)
    again, world_again = load_truth(tmp_path / "truth.npz")
    assert again == planted
    assert list(world_again) == [1] and np.array_equal(world_again[1][0], rgb)
    assert world_again[1][1:] == ([(5, 0, "train")], [7, 9])


def test_a_pair_found_from_both_sides_is_kept_once_at_its_best_cosine():
    pairs = np.array([[1, 9, 0.98], [2, 5, 0.99], [1, 9, 0.985], [1, 8, 0.97]])
    assert leaks.unique_pairs(pairs).tolist() == [[1, 8, 0.97], [1, 9, 0.985], [2, 5, 0.99]]
