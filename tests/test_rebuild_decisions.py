"""The rebuild's validation and its morning report, on hand-made inputs."""

import json
from dataclasses import replace

from tests.factories import evaluation_report
from towerbridge import rebuild as decide
from towerbridge.milvus.record import VersionEvaluation
from towerbridge.results import BuiltVersion

BUILT = BuiltVersion(collection="items_v2", alias="items", rows=400, items=400, segments=(400,),
                     index={"index_type": "IVF_PQ", "params": {"nlist": 20, "m": 32, "nbits": 8}}, nprobe=8,
                     index_recall=0.97, model_id="m2", model_dir="/models/m2", insert_workers=2,
                     timing={"embed_s": 0.4, "insert_s": 2.6, "index_s": 31.0, "tune_s": 3.5})


def report(hit_rate: float, ndcg: float = 0.05, dataset: str = "synthetic", protocol: str = "leave-last-out"):
    return evaluation_report(hit_rate, ndcg, dataset=dataset, protocol=protocol)


def serving_evaluation(hit_rate: float, **where) -> VersionEvaluation:
    return VersionEvaluation.of(report(hit_rate, **where))


def test_the_first_rebuild_serves_on_its_own_checks():
    decision = decide.validate(BUILT, report(0.1), None, None, target_recall=0.95)
    assert decision.passed and decision.reason == "every check passed"
    assert [check.name for check in decision.checks] == ["row count", "index recall", "metrics vs serving"]
    assert all(check.passed for check in decision.checks)
    assert decision.checks[2] == decide.Check("metrics vs serving", True,
                                              "no version serves yet: the first one serves on its own checks")


def test_a_candidate_not_worse_beyond_tolerance_serves():
    assert decide.validate(BUILT, report(0.098), "items_v1", serving_evaluation(0.1), 0.95, tolerance=0.005).passed


def test_a_worse_candidate_is_rejected_with_the_numbers():
    decision = decide.validate(BUILT, report(0.08), "items_v1", serving_evaluation(0.1), 0.95, tolerance=0.005)
    assert not decision.passed
    assert decision.reason == ("metrics vs serving: candidate is worse: hit_rate@10 0.0800 < serving 0.1000 - "
                               "tolerance 0.005 (serving: items_v1)")


def test_missing_rows_and_low_recall_are_each_named():
    built = replace(BUILT, rows=399, index_recall=0.9)
    decision = decide.validate(built, report(0.1), None, None, target_recall=0.95)
    assert not decision.passed
    assert "row count: 399 rows indexed for 400 items" in decision.reason
    assert "index recall: recall@100 against exact search 0.9000 at nprobe 8 (target 0.95)" in decision.reason


def test_metrics_from_another_protocol_or_none_are_not_compared_and_say_so():
    other = decide.validate(BUILT, report(0.01), "items_v1", serving_evaluation(0.5, protocol="tfrs"), 0.95)
    assert other.passed and other.checks[2].detail == (
        "items_v1 was evaluated on synthetic (tfrs), the candidate on synthetic (leave-last-out): not compared")
    unevaluated = decide.validate(BUILT, report(0.01), "items_v1", None, 0.95)
    assert unevaluated.passed and unevaluated.checks[2].detail == "items_v1 has no recorded evaluation: not compared"


def test_the_report_shows_old_and_new_metrics_and_the_decision(tmp_path):
    serving = serving_evaluation(0.1)
    decision = decide.validate(BUILT, report(0.08), "items_v1", serving, 0.95)
    summary = decide.RebuildSummary(
        alias="items", outcome="rejected", started_at="2026-11-28T02:00:00Z", seconds=61.2, serving_before="items_v1",
        serving_after="items_v1", built=BUILT, report=report(0.08), serving_evaluation=serving, decision=decision,
        error="RebuildRejected: candidate items_v2 rejected")
    decide.write_summary(summary, tmp_path)
    text = (tmp_path / "rebuild.md").read_text()
    assert text.startswith("# Rebuild of `items`: rejected")
    assert "serving before: `items_v1`; serving now: `items_v1`" in text
    assert "- candidate: `items_v2` (400 rows, IVF_PQ nlist 20, m 32, nbits 8, tuned nprobe 8), model `m2`" in text
    assert ("- build time: embedding 0 s, inserts 3 s (2 process(es)), index build and load 31 s, search tuning 4 s"
            in text)
    assert "| hit_rate@10 | 0.1000 | 0.0800 | -0.0200 |" in text
    assert "| metrics vs serving | **no** |" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rebuild.json", "rebuild.md"]
    written = json.loads((tmp_path / "rebuild.json").read_text())
    assert written["serving_evaluation"] == {"dataset": "synthetic", "protocol": "leave-last-out", "users": 943,
                                             "model": report(0.1).model, "evaluated_at": serving.evaluated_at}
    assert written["report"] == {"dataset": "synthetic", "protocol": "leave-last-out", "users_evaluated": 943,
                                 "model": report(0.08).model, "ann_gap": report(0.08).ann_gap,
                                 "index_recall": {"recall@1": 0.94, "recall@10": 0.98}}
    assert written["decision"]["checks"][2] == {"check": "metrics vs serving", "passed": False,
                                                "detail": decision.checks[2].detail}
    assert (written["decision"]["passed"], written["decision"]["reason"]) == (False, decision.reason)


def test_a_scann_candidate_is_validated_and_reported_with_its_index_type_and_re_ranking(tmp_path):
    built = replace(BUILT, index={"index_type": "SCANN", "params": {"nlist": 20, "nprobe": 8, "reorder_k": 800}},
                    nprobe=4, reorder_k=200, index_recall=0.9)
    decision = decide.validate(built, report(0.1), None, None, target_recall=0.95)
    assert "index recall: recall@100 against exact search 0.9000 at nprobe 4, reorder_k 200 (target 0.95)" in \
        decision.reason
    summary = decide.RebuildSummary(alias="items", outcome="rejected", started_at="2026-11-28T02:00:00Z", seconds=61.2,
                                    built=built, report=report(0.1), decision=decision)
    decide.write_summary(summary, tmp_path)
    text = (tmp_path / "rebuild.md").read_text()
    assert "- candidate: `items_v2` (400 rows, SCANN nlist 20, tuned nprobe 4, reorder_k 200), model `m2`" in text


def test_the_summary_json_says_what_serves_and_leaves_out_what_never_happened():
    summary = decide.RebuildSummary(alias="items", started_at="2026-11-28T02:00:00Z")
    assert summary.to_dict() == {"alias": "items", "started_at": "2026-11-28T02:00:00Z", "outcome": "failed",
                                 "serving_before": None, "serving_after": None}
    summary.built, summary.dropped_versions = BUILT, []
    summary.decision = decide.validate(BUILT, report(0.1), None, None, target_recall=0.95)
    summary.warn("retention failed, old versions kept: down")
    record = summary.to_dict()
    assert record["built"]["index_recall@100"] == 0.97 and record["built"]["segments"] == [400]
    assert record["decision"]["passed"] and record["decision"]["reason"] == "every check passed"
    assert record["dropped_versions"] == [] and record["warnings"] == ["retention failed, old versions kept: down"]


def test_a_failed_rebuilds_error_carries_what_it_did():
    summary = decide.RebuildSummary(alias="items", started_at="2026-11-28T02:00:00Z", outcome="rejected")
    error = RuntimeError("candidate items_v2 rejected")
    assert decide.summary_of(error) is None  # failed before it had a summary
    decide.attach(error, summary)
    assert decide.summary_of(error) is summary
