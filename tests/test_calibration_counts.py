"""What a calibration counts and says: segments tied at the 10th place found either
way, and a failed budget named as the budget's, not the target's."""

import dataclasses

import usesearch.indexer.calibration as calibration
import usesearch.indexer.calibration.choice as choice
from tests.test_calibration import FACTORY
from tests.test_index_scale import synthetic_index
from usesearch.indexer import SegmentIndex, reindex


def test_segments_tied_at_the_tenth_place_count_as_found(tmp_path):
    """Equal vectors (a photo stored as PNG and as BMP, a repeated pattern) tie; the
    search path and the exact heap order ties apart, and counting by ids alone called
    the search's choice a miss: an exhaustive search measured 0.88-0.95, "not met"."""
    from usesearch.indexer.calibration.truth import recalls

    synthetic_index(tmp_path / "db", n=6000, dim=64, noise=0.0)  # ~20 equal vectors a cluster
    reindex(tmp_path / "db", FACTORY, recall_target=0.95, text_queries=False)
    ix = SegmentIndex.open(tmp_path / "db")
    vectors, excluded, _ = calibration.query_vectors(ix.store, None)
    truth = calibration.exact_top(ix.store, vectors, excluded, 10)
    assert max(map(len, truth.tied)) > 10 and truth.need == [10] * len(vectors)  # more tied than places
    everything = (calibration.ivf_of(ix.index.index).nlist, 200)
    hits, _ = choice.run(ix, vectors, excluded, everything, range(len(vectors)))
    assert recalls(hits, truth).min() == 1.0
    assert recalls([list(h)[:9] + [0] for h in hits], truth).max() == 0.9  # a miss is still one
    assert ix.calibration.met and ix.calibration.recall == 1.0


def test_a_calibration_that_failed_its_budget_says_so_rather_than_blame_the_target():
    """--latency-budget 0.001 with --recall-target 0: "target 0.0 not met within 0.001 ms:
    the best recall it affords", of a setting at 8 ms and recall 0.88."""
    measured = calibration.Calibration(
        "f", FACTORY, 1024, 8, 1000, 0.88, {"image": 0.88}, 8.0, False, 0.0, 0.001, over_budget=True
    )
    said = measured.describe()
    assert "no setting searched within the 0.001 ms budget (a fifth of it kept spare), target 0.0 reached" in said
    short = dataclasses.replace(measured, target=0.95, budget_ms=50.0, over_budget=False)  # the recall fell short
    assert "target 0.95 not met within 50 ms: the best recall it affords" in short.describe()
    assert "target 0.95 within 50 ms)" in dataclasses.replace(short, recall=0.96, met=True).describe()


def test_the_worst_kind_of_query_is_named_only_where_the_kinds_differ_as_shown():
    """A worst kind was named of two recalls shown equal: "(text 1.00, image 1.00; worst text)"."""
    tied = calibration.Calibration("f", FACTORY, 1024, 8, 1000, 0.999, {"text": 0.999, "image": 1.0}, 8.0, True)
    assert "(text 1.00, image 1.00) at nprobe 8" in tied.describe()
    apart = dataclasses.replace(tied, recall_kinds={"text": 0.97, "image": 1.0})
    assert "(text 0.97, image 1.00; worst text) at nprobe 8" in apart.describe()


def test_the_choice_says_when_no_setting_searched_within_the_budget(monkeypatch):
    import numpy as np

    nprobes, reranks = [1, 2], [20]
    curve = {(p, 20): {"recall": 0.9, "recall_kinds": {"text": 0.9}} for p in nprobes}
    monkeypatch.setattr(choice, "run", lambda ix, vectors, excluded, setting, rows: ([], 8.0 * setting[0]))
    for budget, over in ((0.001, True), (100.0, False), (0.0, False)):
        picked = choice.choose(None, np.zeros((20, 4)), np.zeros(20, int), curve, nprobes, reranks, 0.0, budget)
        assert picked.over_budget is over and picked.met is not over, budget


def test_a_group_of_equal_vectors_larger_than_the_kept_best_is_tied_whole():
    """Ties were kept among each query's best 40: 80 equal vectors, and a search that
    returned 10 of those past the 40th counted 0 of 10."""
    from types import SimpleNamespace

    import numpy as np

    from usesearch.indexer.calibration.truth import recalls

    rng = np.random.default_rng(0)
    same = rng.standard_normal(16).astype(np.float32)
    rows = np.vstack([np.tile(same, (80, 1)), rng.standard_normal((120, 16))])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)  # unit vectors, as stored
    ids = np.arange(1, 201)
    store = SimpleNamespace(embeddings=lambda: iter([(ids[:100], rows[:100]), (ids[100:], rows[100:])]))
    queries = rows[[0, 150]].astype(np.float32)
    truth = calibration.exact_top(store, queries, np.array([1, 0]), 10)
    assert truth.tied[0] == set(range(2, 81)) and truth.above[0] == set()  # all 79 others, its own left out
    assert len(truth.tied[1]) == 1 and len(truth.above[1]) == 9  # no tie: the 10th alone
    assert recalls([list(range(71, 81)), []], truth).tolist() == [1.0, 0.0]
    nothing = calibration.exact_top(SimpleNamespace(embeddings=lambda: iter([])), queries[:1], np.array([0]), 10)
    assert recalls([[]], nothing).tolist() == [1.0]  # nothing to find: nothing missed


def _curve(nprobes, reranks):
    recall = {1: 0.6, 2: 0.85, 4: 0.9, 8: 0.95, 16: 0.995}
    return {(p, r): {"recall": recall[p], "recall_kinds": {"text": recall[p]}} for p in nprobes for r in reranks}


def test_a_probe_over_the_limit_is_timed_again_before_it_caps_every_larger_setting(monkeypatch):
    """The bisection takes cost as rising with effort: one slow turn (another process's)
    of a cheap setting capped every larger one, and recall 0.57 was kept where 0.67 fit."""
    import numpy as np

    nprobes, reranks, slow_once = [1, 2, 4, 8, 16], [20], {(2, 20)}

    def run(ix, vectors, excluded, setting, rows):  # 2 ms a list, but (2, 20)'s first turn is slow
        if setting in slow_once:
            slow_once.discard(setting)
            return [], 500.0
        return [], 2.0 * setting[0]

    monkeypatch.setattr(choice, "run", run)
    picked = choice.choose(
        None, np.zeros((60, 4)), np.zeros(60, int), _curve(nprobes, reranks), nprobes, reranks, 0.99, 50
    )
    assert picked.setting == (16, 20) and not picked.over_budget  # 32 ms: affordable, the best recall


def test_a_setting_retimed_past_the_spare_fifth_but_within_the_budget_is_not_over_it(monkeypatch):
    """The best recall the budget affords, re-timed at 44 ms against a 40 ms limit (50 ms
    budget), was said as "no setting searched within the 50 ms budget ... the fastest
    setting measured": neither was true."""
    import numpy as np

    nprobes, reranks, turns = [1, 2, 4], [20], []

    def run(ix, vectors, excluded, setting, rows):  # 39 ms when probed, 44 ms when compared
        turns.append(setting)
        return [], 44.0 if len(rows) == 1 and setting == (4, 20) else 13.0 * setting[0] / (4 / 3)

    monkeypatch.setattr(choice, "run", run)
    picked = choice.choose(
        None, np.zeros((60, 4)), np.zeros(60, int), _curve(nprobes, reranks), nprobes, reranks, 0.99, 50
    )
    assert picked.setting == (4, 20) and not picked.met and not picked.over_budget
    measured = calibration.Calibration(
        "f", FACTORY, 1024, 4, 20, 0.9, {"text": 0.9}, 44.0, picked.met, 0.99, 50.0, over_budget=picked.over_budget
    )
    assert "target 0.99 not met within 50 ms: the best recall it affords" in measured.describe()
    # The same timings with a target its recall meets: met (it was "not met" at recall 0.9 of 0.9).
    met = choice.choose(None, np.zeros((60, 4)), np.zeros(60, int), _curve(nprobes, reranks), nprobes, reranks, 0.9, 50)
    assert met.setting == (4, 20) and met.met and not met.over_budget


def test_a_choice_a_busy_machine_forced_is_measured_again_when_next_due(monkeypatch):
    """Calibrated at load 3.6 a core, nothing searched within the budget and the cheapest
    setting was kept at recall 0.28, for every search until someone ran calibrate."""
    from usesearch.indexer.calibration import outdated

    curve = [{"nprobe": 16, "rerank": 1000}, {"nprobe": 32, "rerank": 1000}]
    forced = calibration.Calibration(
        "f", FACTORY, 40000, 16, 1000, 0.28, {"text": 0.28}, 52.0, False, 0.95, 50.0, curve=curve, over_budget=True
    )
    assert not outdated(forced, 40000, None)  # a quiet machine's cheapest: the budget is what it is
    busy = dataclasses.replace(forced, load_per_core=3.6)
    monkeypatch.setattr(calibration, "load_per_core", lambda: 0.3)
    assert busy.provisional() and outdated(busy, 40000, None)
    monkeypatch.setattr(calibration, "load_per_core", lambda: 2.0)  # still busy: it would be forced again
    assert not outdated(busy, 40000, None)
    said = busy.describe()
    assert "target 0.95 not met either: the cheapest setting; timed on a busy machine (load 3.6 per core)" in said
    assert "measured again at an indexing run's end on a quieter machine, or now by `usesearch calibrate`" in said


def test_a_search_says_when_its_effort_flags_do_nothing_or_its_index_is_under_target(tmp_path):
    """Only `info` said an index searched below its recall target (ranks 3-5 differed from
    a full search, unsaid); --nprobe and --rerank on an exact index were ignored unsaid."""
    from types import SimpleNamespace

    from usesearch.indexer.filters import SearchFilters, effort_notes
    from usesearch.indexer.index_kinds import new_index
    from usesearch.indexer.vectors import Vectors

    def index(factory, measured=None):
        store = SimpleNamespace(url=f"sqlite:///{tmp_path}/db/segments.sqlite")
        return SimpleNamespace(index=Vectors(new_index(8, factory)), calibration=measured, db_dir=tmp_path, store=store)

    def _effort_notes(ix, filters):  # as the CLI asks for them
        return effort_notes(ix, filters, lambda name: f"--{name}", f"`usesearch info --db {tmp_path}` says why; ")

    short = calibration.Calibration("f", FACTORY, 40000, 16, 1000, 0.47, {"text": 0.47}, 9.0, False, 0.95, 10.0)
    asked = SearchFilters(nprobe=4, rerank=100)
    assert _effort_notes(index("Flat"), asked) == [
        "--nprobe and --rerank: this index is exact (every segment scored): nothing to change"
    ]
    assert _effort_notes(index("HNSW8"), asked) == [
        "--nprobe: this index has no clusters to visit (a graph): nothing to change"
    ]
    [said] = _effort_notes(index("IVF2,Flat", short), SearchFilters())
    assert said.startswith("this index searches at recall@10 ~0.47, under its target 0.95 (`usesearch info --db ")
    assert _effort_notes(index("IVF2,Flat", short), SearchFilters(nprobe=2, rerank=100)) == []  # harder, as asked
    assert _effort_notes(index("IVF2,Flat", short), SearchFilters(nprobe=5)) == [
        "--nprobe 5: this index has 2 clusters: all 2 visited"  # (FAISS caps it unsaid)
    ]
    assert _effort_notes(index("IVF2,Flat", dataclasses.replace(short, met=True, recall=0.96)), SearchFilters()) == []
    slow = dataclasses.replace(short, recall=0.96, over_budget=True)  # the target reached, past the budget
    assert _effort_notes(index("IVF2,Flat", slow), SearchFilters()) == []


def test_a_large_k_re_scores_at_most_candidates_max(tmp_path, monkeypatch):
    """k=1000 asked FAISS for 100 candidates a hit, 100,000, and re-scored them all
    (5 s and 1.1 GB a query at 210k segments); a per-image or distinct search was capped."""
    import numpy as np

    import usesearch.indexer.search as search_module

    data = synthetic_index(tmp_path / "db", n=6000, dim=32)
    reindex(tmp_path / "db", FACTORY, text_queries=False)
    ix = SegmentIndex.open(tmp_path / "db")
    monkeypatch.setattr(search_module, "CANDIDATES_MAX", 1500)
    asked: list[int] = []
    real_search = ix.index.search
    monkeypatch.setattr(
        ix.index, "search", lambda vector, k, *a, **kw: asked.append(k) or real_search(vector, k, *a, **kw)
    )
    query = data[7] / np.linalg.norm(data[7])
    hits = ix.search_vector(query, 300)
    assert len(hits) == 300 and asked == [1500], asked  # (its calibration wanted more: 100 a hit at least)
    exact = set((np.argsort(-(data.astype(np.float16).astype(np.float32) @ query), kind="stable")[:300] + 1).tolist())
    monkeypatch.setattr(search_module, "CANDIDATES_MAX", 10**9)
    uncapped = ix.search_vector(query, 300)
    assert asked[-1] > 1500  # (as before)
    found = [len(exact & {h.segment_id for h in found}) / 300 for found in (hits, uncapped)]
    assert found[0] >= found[1] - 0.02, found  # the clusters visited bound the recall here, not the candidates


def test_a_recall_under_its_target_is_never_shown_as_reaching_it():
    """`query` said "recall@10 ~1.00, under its target 1.0" of a calibration at 0.9988."""
    from usesearch.reports import recall_shown

    assert [recall_shown(r, t) for r, t in ((0.9988, 1.0), (0.947, 0.95), (0.88, 0.95), (1.0, 1.0))] == [
        "0.999",
        "0.947",
        "0.88",
        "1.00",
    ]
    assert recall_shown(0.9999999, 1.0) == "0.9999999" and recall_shown(0.951, 0.95) == "0.95"  # (met: two)
    short = calibration.Calibration("f", FACTORY, 1024, 8, 1000, 0.9988, {"text": 0.9988}, 8.0, False, 1.0, 50.0)
    said = short.describe()
    assert said.startswith("recall@10 0.999 (text 0.999) at nprobe 8") and "target 1.0 not met" in said, said


def test_an_index_run_that_calibrates_says_what_it_measured(tmp_path, monkeypatch):
    """A run that grew an index past twice its last calibration measured it again: `info`
    showed the new recall and defaults, the run's summary said nothing of them."""
    import json

    from typer.testing import CliRunner

    from tests.helpers import write_photos
    from usesearch.cli.app import app
    from usesearch.indexer import writer

    measured = calibration.Calibration("f", FACTORY, 1024, 8, 1000, 0.96, {"text": 0.96}, 8.0, True, 0.95, 50.0)
    due: list = [measured]
    monkeypatch.setattr(writer, "calibrate_if_due", lambda *a: due.pop() if due else None)
    photos = write_photos(tmp_path / "photos", ("coffee",))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--json"]
    first = CliRunner().invoke(app, args)
    said = " ".join(first.stderr.split())
    assert first.exit_code == 0 and f"calibrated: {measured.describe()}" in said, said
    assert json.loads(first.stdout)["proposals"]["calibrated"]["recall"] == 0.96
    write_photos(photos, ("rocket",))
    again = CliRunner().invoke(app, args)  # none due: nothing said
    assert again.exit_code == 0 and "calibrated:" not in again.stderr
    assert json.loads(again.stdout)["proposals"]["calibrated"] is None


def test_other_processes_beside_a_calibration_flag_it_busy_and_a_short_choice_provisional(monkeypatch):
    """One busy process beside a calibration on 2 cores: the load average read 1.26 a core
    (under ``BUSY``), a setting of 28 ms timed at 43, and recall 0.93 was kept for a target
    of 0.95, said as final, never measured again."""
    from usesearch import machine_load
    from usesearch.indexer.calibration import outdated

    clocks = iter([(0.0, 10.0, 4.0, 2), (10.0, 25.0, 9.0, 2)])  # 15 s of CPU in 10 s on 2 cores, 5 of them ours
    monkeypatch.setattr(machine_load, "machine_clock", lambda: next(clocks))
    since = machine_load.machine_clock()
    assert machine_load.others_per_core(since) == 0.5
    curve = [{"nprobe": 1024, "rerank": 2000, "recall": 0.93}, {"nprobe": 1024, "rerank": 4000, "recall": 0.96}]
    short = calibration.Calibration(
        "f", FACTORY, 40000, 1024, 2000, 0.93, {"text": 0.93}, 20.0, False, 0.95, 50.0, curve=curve, others_per_core=0.5
    )
    assert short.busy() and short.provisional()
    # No setting reached the target, on recall alone: no timing could have, nothing to measure again.
    assert not dataclasses.replace(short, curve=curve[:1]).provisional()
    said = short.describe()
    assert "target 0.95 not met within 50 ms: the best recall it affords; timed on a busy machine (other " in said
    assert "processes used 50% of its cores): measured again at an indexing run's end on a quieter machine" in said
    monkeypatch.setattr(calibration, "load_per_core", lambda: 0.9)  # (this run's own threads: under BUSY)
    monkeypatch.setattr(machine_load, "others_now", lambda seconds=0.25: 0.0)
    assert outdated(short, 40000, None)  # quiet now: measured again
    monkeypatch.setattr(machine_load, "others_now", lambda seconds=0.25: 0.6)
    assert not outdated(short, 40000, None)  # still busy: it would be slowed again
    quiet = dataclasses.replace(short, others_per_core=0.1)
    assert not quiet.busy() and not quiet.provisional() and "busy" not in quiet.describe()
    assert not dataclasses.replace(short, met=True).provisional()  # met: nothing to measure again for


def test_a_process_spinning_beside_counts_in_other_processes_time():
    """The measure itself, on this machine: a child process spinning for 0.6 s of CPU is
    another process's time (this one's own is left out: the clock's third reading)."""
    import importlib.util
    import subprocess
    import sys

    import pytest

    from usesearch import machine_load

    # The module as written (the suite stands in for its clock: ``conftest.other_processes_idle``).
    spec = importlib.util.spec_from_file_location("machine_load_as_written", machine_load.__file__)
    assert spec is not None and spec.loader is not None
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    since = real.machine_clock()
    if since is None:
        pytest.skip("psutil reads no CPU times here: other processes' share reads 0")
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    now = real.machine_clock()
    others = (now[1] - since[1]) - (now[2] - since[2])  # CPU seconds, whatever the number of cores
    assert others >= 0.5 and now[3] == since[3] >= 1
