"""The rebuild's validation and its morning report, on hand-made inputs."""

import json
from dataclasses import replace

import pytest

from tests.factories import comparison, evaluation_report
from towerbridge import rebuild as decide
from towerbridge.results import BuiltVersion, Comparison

BUILT = BuiltVersion(collection="items_v2", alias="items", rows=400, items=400, segments=(400,),
                     index={"index_type": "IVF_PQ", "params": {"nlist": 20, "m": 32, "nbits": 8}}, nprobe=8,
                     index_recall=0.97, model_id="m2", model_dir="/models/m2", insert_workers=2,
                     timing={"embed_s": 0.4, "insert_s": 2.6, "index_s": 31.0, "tune_s": 3.5})
NOTHING = decide.not_compared(decide.Serving(None), 0.95, 0.005)


def report(hit_rate: float = 0.1, ndcg: float = 0.05):
    return evaluation_report(hit_rate, ndcg, dataset="synthetic")


def test_the_first_rebuild_serves_on_its_own_checks():
    decision = decide.validate(BUILT, NOTHING, target_recall=0.95)
    assert decision.passed and decision.reason == "every check passed"
    assert [check.name for check in decision.checks] == ["row count", "index recall", "metrics vs serving"]
    assert decision.checks[2] == decide.Check("metrics vs serving", True,
                                              "no version serves yet: the first one serves on its own checks")


def test_a_damaged_serving_version_is_not_compared_and_a_healthy_one_is():
    damaged = decide.not_compared(decide.Serving("items_v1", missing_files=("a",)), 0.95, 0.005)
    assert damaged.serving == "items_v1" and not damaged.compared and damaged.passed
    assert damaged.note == "items_v1 is damaged (files missing) and serves nothing: not compared"
    assert decide.not_compared(decide.Serving("items_v1"), 0.95, 0.005) is None  # steps.compare_with_serving's


def test_a_candidate_worse_by_less_than_its_uncertainty_serves():
    # 0.0150 worse on these users, but the interval reaches above -0.005: noise, not a worse model
    decision = decide.validate(BUILT, comparison(-0.015, half_width=0.0125), 0.95)
    assert decision.passed
    assert decision.checks[2].detail.startswith(
        "candidate is not shown to be worse, on the same 943 users (serving items_v1): "
        "hit_rate@10 0.1250 vs serving 0.1400, difference -0.0150 (95% interval -0.0275 to -0.0025)")


def test_a_candidate_worse_with_confidence_is_rejected_with_both_figures_and_the_interval():
    decision = decide.validate(BUILT, comparison(-0.03, half_width=0.02), 0.95)
    assert not decision.passed
    assert decision.reason == (
        "metrics vs serving: candidate is worse with confidence, on the same 943 users (serving items_v1): "
        "hit_rate@10 0.1100 vs serving 0.1400, difference -0.0300 (95% interval -0.0500 to -0.0100); "
        "ndcg@10 0.0400 vs serving 0.0700, difference -0.0300 (95% interval -0.0500 to -0.0100) "
        "(rejected when a metric's 95% interval for candidate - serving lies wholly below -0.005)")


def test_the_margin_decides_at_the_interval_bound():
    # the upper bound -0.01: below a margin of 0.005, not below one of 0.02
    assert not comparison(-0.03, half_width=0.02, margin=0.005).passed
    assert comparison(-0.03, half_width=0.02, margin=0.02).passed


def test_a_comparison_with_unbounded_intervals_never_rejects_and_round_trips_through_json():
    few = replace(comparison(-0.5), metrics=tuple(replace(m, low=float("-inf"), high=float("inf"))
                                                  for m in comparison(-0.5).metrics))
    assert few.passed
    written = json.loads(json.dumps(few.to_dict()))
    assert written["metrics"][0]["low"] is None and written["metrics"][0]["high"] is None
    assert Comparison.from_dict(written) == few
    assert Comparison.from_dict(json.loads(json.dumps(comparison(-0.03).to_dict()))) == comparison(-0.03)


def test_missing_rows_and_low_recall_are_each_named():
    built = replace(BUILT, rows=399, index_recall=0.9)
    decision = decide.validate(built, NOTHING, target_recall=0.95)
    assert not decision.passed
    assert "row count: 399 rows indexed for 400 items" in decision.reason
    assert "index recall: recall@100 against exact search 0.9000 at nprobe 8 (target 0.95)" in decision.reason


def test_the_report_shows_both_models_on_the_same_users_the_interval_and_the_rule(tmp_path):
    compared = comparison(-0.03, half_width=0.02, note="12 users the serving model was not trained on (it "
                                                       "cannot answer them) counted as its misses",
                          unknown_users=12)
    decision = decide.validate(BUILT, compared, 0.95)
    summary = decide.RebuildSummary(
        alias="items", outcome="rejected", started_at="2026-11-28T02:00:00Z", seconds=61.2, serving_before="items_v1",
        serving_after="items_v1", built=BUILT, report=report(0.11), comparison=compared, decision=decision,
        error="RebuildRejected: candidate items_v2 rejected")
    decide.write_summary(summary, tmp_path)
    text = (tmp_path / "rebuild.md").read_text()
    assert text.startswith("# Rebuild of `items`: rejected")
    assert "serving before: `items_v1`; serving now: `items_v1`" in text
    assert "- candidate: `items_v2` (400 rows, IVF_PQ nlist 20, m 32, nbits 8, tuned nprobe 8), model `m2`" in text
    assert ("- build time: embedding 0 s, inserts 3 s (2 process(es)), index build and load 31 s, search tuning 4 s"
            in text)
    assert "## Candidate against serving, on the same 943 users" in text
    assert "Rule: rejected when a metric's 95% interval for candidate - serving lies wholly below -0.005" in text
    assert "| hit_rate@10 | 0.1400 | 0.1100 | -0.0300 | -0.0500 to -0.0100 | **worse** |" in text
    assert "Counted: 12 users the serving model was not trained on" in text
    assert "| metrics vs serving | **no** |" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rebuild.json", "rebuild.md"]
    written = json.loads((tmp_path / "rebuild.json").read_text())
    assert Comparison.from_dict(written["comparison"]) == compared
    first = written["comparison"]["metrics"][0]
    assert first.pop("metric") == "hit_rate@10"
    assert first == pytest.approx({"serving": 0.14, "candidate": 0.11, "difference": -0.03, "low": -0.05,
                                   "high": -0.01})
    assert written["report"] == {"dataset": "synthetic", "protocol": "leave-last-out", "users_evaluated": 943,
                                 "model": report(0.11).model, "ann_gap": report(0.11).ann_gap,
                                 "index_recall": {"recall@1": 0.94, "recall@10": 0.98}}
    assert written["decision"]["checks"][2] == {"check": "metrics vs serving", "passed": False,
                                                "detail": decision.checks[2].detail}
    assert (written["decision"]["passed"], written["decision"]["reason"]) == (False, decision.reason)


def test_the_report_of_a_first_rebuild_shows_the_candidates_metrics_and_why_nothing_was_compared(tmp_path):
    summary = decide.RebuildSummary(alias="items", outcome="swapped", started_at="2026-11-28T02:00:00Z",
                                    built=BUILT, report=report(0.11), comparison=NOTHING,
                                    decision=decide.validate(BUILT, NOTHING, 0.95))
    text = decide.markdown(summary)
    assert "Not compared with a serving model: no version serves yet" in text
    assert "| hit_rate@10 | 0.1100 |" in text and "Candidate against serving" not in text


def test_a_scann_candidate_is_validated_and_reported_with_its_index_type_and_re_ranking(tmp_path):
    built = replace(BUILT, index={"index_type": "SCANN", "params": {"nlist": 20, "nprobe": 8, "reorder_k": 800}},
                    nprobe=4, reorder_k=200, index_recall=0.9)
    decision = decide.validate(built, NOTHING, target_recall=0.95)
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
    summary.decision = decide.validate(BUILT, NOTHING, target_recall=0.95)
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


@pytest.fixture(scope="module")
def serving_model(tmp_path_factory):
    """A small trained model on disk and a serving version whose record names it."""
    from towerbridge.data.split import leave_last_one_out
    from towerbridge.data.synthetic import SyntheticSpec, generate
    from towerbridge.milvus.record import VersionRecord
    from towerbridge.towers import artifact
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.manifest import TrainingRun
    from towerbridge.towers.train import train

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=150, n_topics=6, seed=2))
    config = TowerConfig(user_tower="id", epochs=1, batch_size=256)
    trained = train(leave_last_one_out(interactions)[0], items, None, config, progress=False)
    data = {"dataset": "synthetic", "protocol": "leave-last-out", "id_type": "int64"}
    root = tmp_path_factory.mktemp("serving")
    directory = artifact.save(trained, root / "m1", TrainingRun(prepared_dir="/prepared", data=data))
    tfrs = TrainingRun(prepared_dir="/prepared", data={**data, "protocol": "tfrs"})
    random_split = artifact.save(trained, root / "m2", tfrs)
    serving = decide.Serving("items_v1", VersionRecord(model_id="m1", model_dir=str(directory)))
    return serving, config, data, trained.spec.to_dict(), str(random_split)


def test_the_serving_model_is_continued_only_on_the_same_data_split_and_features(serving_model):
    serving, config, data, features, random_split = serving_model
    start = decide.training_start(serving, config, False, data, features)
    assert start == decide.Start(serving.record.model_dir, "continued from the serving model m1 (items_v1)")
    reasons = {
        "asked": decide.training_start(serving, config, True, data, features),
        "nothing": decide.training_start(decide.Serving(None), config, False, data, features),
        "shape": decide.training_start(serving, replace(config, vector_dim=17), False, data, features),
        "dataset": decide.training_start(serving, config, False, {**data, "dataset": "movielens-100k"}, features),
        "ids": decide.training_start(serving, config, False, {**data, "id_type": "string"}, features),
        "tfrs": decide.training_start(serving, config, False, {**data, "protocol": "tfrs"}, features),
        "features": decide.training_start(serving, config, False, data, {"user": [], "item": []}),
        "gone": decide.training_start(decide.Serving("items_v1", replace(serving.record, model_dir="/no/model")),
                                      config, False, data, features),
    }
    assert all(start.parent_dir is None for start in reasons.values())
    why = {name: start.why for name, start in reasons.items()}
    assert why["asked"] == "from scratch (--from-scratch)"
    assert why["nothing"] == "from scratch: no version serves yet"
    assert why["shape"].startswith("from scratch: cannot continue training from the serving model m1: its towers "
                                   "have another shape (vector_dim ") and not why["shape"].endswith("instead")
    assert why["dataset"] == ("from scratch: the serving model m1 was trained on other data (dataset 'synthetic' "
                              "there, 'movielens-100k' here)")
    assert why["ids"].endswith("(id type 'int64' there, 'string' here)")
    assert why["tfrs"].endswith("(split 'leave-last-out' there, 'tfrs' here)")
    assert why["features"] == ("from scratch: the serving model m1 read other features (user: user_id (id); item: "
                               "item_id (id), genres (multi_hot), title (text) there, user: none; item: none here)")
    assert why["gone"] == "from scratch: /no/model: model directory not found"
    # trained on tfrs' random split, and today's data split the same way: reshuffled, never continued
    on_tfrs = decide.Serving("items_v2", replace(serving.record, model_dir=random_split))
    start = decide.training_start(on_tfrs, config, False, {**data, "protocol": "tfrs"}, features)
    assert start.parent_dir is None and start.why == (
        "from scratch: the tfrs split is random and reshuffled with the data, so the serving model m2 trained "
        "on some of today's held-out interactions")
