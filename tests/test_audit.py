"""Auditing: planted wrong labels in a synthetic COCO dataset rank at the top."""

import json

import numpy as np
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.training.synthetic import write_instances_coco


def test_planted_wrong_labels_rank_at_the_top(trained_tiny_head, tmp_path):
    head, _ = trained_tiny_head
    coco_json, planted = write_instances_coco(tmp_path / "data", 30, seed=7, wrong_fraction=0.15)
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "audit",
            "--coco",
            str(coco_json),
            "--images",
            str(tmp_path / "data" / "images"),
            "--head",
            str(head),
            "--out",
            str(out),
            "-k",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    suspects = json.loads((out / "suspects.json").read_text())
    ranked = [s["annotation_id"] for s in suspects]
    assert len(planted) >= 5 and set(planted) <= set(ranked)
    # Rank-based AUROC: how often a planted label outranks a clean one.
    position = {a: i for i, a in enumerate(ranked)}
    clean = [a for a in ranked if a not in planted]
    auroc = float(np.mean([position[p] < position[c] for p in planted for c in clean]))
    top = ranked[: len(planted)]
    assert auroc > 0.8, auroc
    # Random ranking would put ~15% planted labels in the top |planted|; the tiny head
    # (about 0.4 top-1 on this world) puts 40% or more there.
    precision = len(set(top) & planted) / len(planted)
    assert precision >= 0.4, (precision, auroc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["annotations"] == len(ranked) and 0 <= summary["agreement"] <= 1
    assert "most_confused" in summary and (out / "report.html").read_text().count("<figure>") == 10
    assert (out / "suspects.csv").read_text().splitlines()[0].startswith("rank,annotation_id")
    # -k bounds what is shown; the files keep the whole ranking, and the last line says which is which.
    printed = [line for line in result.output.splitlines() if " ann " in line and "labelled" in line]
    assert len(printed) == 10 and len(ranked) > 10
    assert f"suspects.json (all {len(ranked)} annotations ranked)" in result.output and "(the top 10)" in result.output
