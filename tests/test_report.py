"""Reports and the comparison the nightly rebuild relies on, on hand-made reports."""

import json

import pytest

from towerbridge.report import compare, report_markdown, report_table, write_report

KS = (1, 10)


def metrics(hit_rate_10: float, ndcg_10: float = 0.05) -> dict:
    values = {}
    for k in KS:
        scale = k / 10
        values.update({f"hit_rate@{k}": hit_rate_10 * scale, f"recall@{k}": hit_rate_10 * scale,
                       f"ndcg@{k}": ndcg_10 * scale, f"mrr@{k}": ndcg_10 * scale / 2,
                       f"coverage@{k}": 0.1 * scale, f"mean_popularity@{k}": 120.0})
    return values


def report(hit_rate_10: float = 0.14, ndcg_10: float = 0.07) -> dict:
    return {
        "dataset": "movielens-100k", "protocol": "leave-last-out", "ks": list(KS),
        "users_evaluated": 943, "interactions_evaluated": 943, "queries": 943, "query_unit": "user",
        "model": metrics(hit_rate_10, ndcg_10), "exact": metrics(hit_rate_10 + 0.002, ndcg_10),
        "popularity": metrics(0.086), "random": metrics(0.005),
        "ann_gap": {f"{m}@{k}": -0.001 for m in ("hit_rate", "recall", "ndcg", "mrr") for k in KS},
        "index_recall": {"recall@1": 0.94, "recall@10": 0.98},
        "index": {"params": {"nlist": 43, "m": 32, "nbits": 8, "nprobe": 16}},
        "collection": "towerbridge_items_v1",
        "training": {"seconds": 12.8, "epochs": 8},
        "timing": {"milvus_users_per_s": 700.0, "exact_users_per_s": 48000.0},
    }


def test_compare_passes_an_equal_or_better_candidate_and_says_why():
    passed, reason = compare(report(0.15), report(0.14))
    assert passed
    assert reason == ("candidate is not worse beyond 0.005: hit_rate@10 0.1500 (serving 0.1400), "
                      "ndcg@10 0.0700 (serving 0.0700)")


def test_compare_allows_a_drop_within_tolerance_only():
    assert compare(report(0.136), report(0.14), tolerance=0.005)[0]
    passed, reason = compare(report(0.13), report(0.14), tolerance=0.005)
    assert not passed
    assert reason == "candidate is worse: hit_rate@10 0.1300 < serving 0.1400 - tolerance 0.005"


def test_compare_names_every_metric_that_got_worse():
    passed, reason = compare(report(0.10, 0.03), report(0.14, 0.07), tolerance=0.0)
    assert not passed
    assert "hit_rate@10 0.1000 < serving 0.1400" in reason and "ndcg@10 0.0300 < serving 0.0700" in reason


def test_compare_refuses_when_a_metric_is_missing():
    passed, reason = compare(report(0.2), report(0.14), metrics=("hit_rate@50",))
    assert not passed and reason == "metric hit_rate@50 is missing from a report; cannot compare"


def test_table_and_markdown_carry_every_source():
    assert report_table(report()) == [
        {"k": 1, "model": 0.014, "exact": 0.0142, "popularity": 0.0086, "random": 0.0005},
        {"k": 10, "model": 0.14, "exact": 0.142, "popularity": 0.086, "random": 0.005},
    ]
    markdown = report_markdown(report())
    assert "| 10 | 0.1400 | 0.1420 | 0.0860 | 0.0050 |" in markdown
    assert "| 10 | 0.9800 | -0.0010 | -0.0010 |" in markdown  # index recall and ANN gap
    assert "943 users, 943 queries (one per user)" in markdown


def test_write_report_writes_json_markdown_and_png(tmp_path):
    write_report(report(), tmp_path / "report")
    written = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert written == ["evaluation.json", "evaluation.md", "hit_rate.png"]
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text())["model"]["hit_rate@10"] == 0.14
    assert (tmp_path / "report" / "hit_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rejects_a_negative_tolerance():
    with pytest.raises(ValueError, match="tolerance must be 0 or more, got -0.1"):
        compare(report(), report(), tolerance=-0.1)
