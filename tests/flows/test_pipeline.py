"""The pipeline flow end to end: real Prefect (test harness), real embedded Milvus,
the built-in synthetic dataset at its default size, the default (sequence) tower trained for a
few epochs (its quality at the default 32: BENCHMARKS.md)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymilvus import MilvusClient

from towerbridge.defaults import REPORT_KS
from towerbridge.evaluation import METRICS
from towerbridge.flows.evaluate import evaluate
from towerbridge.flows.pipeline import pipeline
from towerbridge.options import EvaluateOptions, PipelineOptions, TrainOptions
from towerbridge.results import EvaluationReport
from towerbridge.steps import user_queries
from towerbridge.towers import artifact
from towerbridge.towers.vectors import item_vectors

KS = (10, 50, 100)
EPOCHS = 2


@pytest.fixture(scope="module")
def run(milvus_uri, prefect_harness, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("report")
    report = pipeline(PipelineOptions(train=TrainOptions(epochs=EPOCHS), report_dir=str(report_dir),
                                      milvus_uri=milvus_uri))
    model_dir = Path(report.model_dir)
    manifest = artifact.read_manifest(model_dir)
    prepared = Path(manifest.prepared_dir)
    train = pd.read_parquet(prepared / "train.parquet")
    return {
        "report": report,
        "report_dir": report_dir,
        "model": artifact.load(model_dir),
        "items": pd.read_parquet(prepared / "items.parquet"),
        "train": train,
        "seen": train.groupby("user_id")["item_id"].apply(set).to_dict(),
        "held_out": pd.read_parquet(prepared / "held_out.parquet"),
        "client": MilvusClient(milvus_uri),
    }


def test_report_file_has_the_promised_shape(run):
    written = json.loads((run["report_dir"] / "evaluation.json").read_text())
    for key in ("dataset", "protocol", "model", "popularity", "index", "collection", "alias"):
        assert key in written
    assert written["dataset"] == "synthetic" and written["protocol"] == "leave-last-out"
    assert run["model"].config.user_tower == "sequence" and len(run["model"].history) == EPOCHS
    assert written["ks"] == list(REPORT_KS) == [1, 5, 10, 20, 50, 100]
    for source in ("model", "exact", "popularity", "random"):
        assert set(written[source]) == {f"{metric}@{k}" for metric in METRICS for k in REPORT_KS}
    assert set(written["index_recall"]) == {f"recall@{k}" for k in REPORT_KS}
    assert written["index"]["index_type"] == "IVF_PQ"
    assert written["users_evaluated"] == written["queries"] == len(run["held_out"])
    assert EvaluationReport.from_dict(written) == replace(run["report"], report_dir=None)
    assert run["report"].report_dir == str(run["report_dir"].resolve())
    markdown = (run["report_dir"] / "evaluation.md").read_text()
    assert markdown.startswith("# Evaluation: synthetic") and "![hit rate against k](hit_rate.png)" in markdown
    assert not list(run["report_dir"].glob("*.partial"))


def test_ann_gap_is_within_what_the_index_recall_allows(run):
    # One held-out item per user: a user's hit at k can only differ between Milvus and exact
    # search if their top k differ, and such a user misses at least 1 of k exact items, so
    # the share of users that differ is at most k * (1 - index recall@k).
    report = run["report"]
    for k in REPORT_KS:
        gap = report.ann_gap[f"hit_rate@{k}"]
        assert gap == pytest.approx(report.model[f"hit_rate@{k}"] - report.exact[f"hit_rate@{k}"], abs=1e-6)
        assert abs(gap) <= k * (1 - report.index_recall[f"recall@{k}"]) + 1e-9, k
        assert 0 < report.index_recall[f"recall@{k}"] <= 1


def test_random_baseline_is_chance(run):
    # Expected hit rate of a uniform ranking of a user's unseen items: k / unseen, per user.
    report, train = run["report"], run["train"]
    unseen = len(run["items"]) - train.groupby("user_id")["item_id"].nunique().reindex(
        run["held_out"]["user_id"]).fillna(0).to_numpy()
    for k in (10, 100):
        p = np.minimum(1, k / unseen)
        spread = 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(report.random[f"hit_rate@{k}"] - p.mean()) <= spread
    assert report.model["hit_rate@10"] > 5 * report.random["hit_rate@10"]


def test_plot_is_a_png_with_every_source(run):
    import matplotlib.image

    image = matplotlib.image.imread(run["report_dir"] / "hit_rate.png")
    assert image.shape[0] > 300 and image.shape[1] > 500  # a readable size, not a thumbnail
    assert image[..., :3].std() > 0.05  # something is drawn on it


def test_evaluating_a_sample_of_users_is_seeded(run, milvus_uri, tmp_path):
    report, model_dir = run["report"], run["report"].model_dir
    sample = EvaluateOptions(eval_users=300, ks=[10])
    first = evaluate(model_dir, report.collection, str(tmp_path / "a"), sample, milvus_uri=milvus_uri)
    again = evaluate(model_dir, report.collection, str(tmp_path / "b"), sample, milvus_uri=milvus_uri)
    assert first.users_evaluated == 300 < report.users_evaluated
    assert first.ks == (10,) and set(first.model) == {f"{metric}@10" for metric in METRICS}
    assert first.model == again.model and first.random == again.random
    # A sample estimates the full number: within 4 standard errors of it.
    p = report.exact["hit_rate@10"]
    assert abs(first.exact["hit_rate@10"] - p) <= 4 * np.sqrt(p * (1 - p) / 300)


def test_collection_holds_every_item_under_ivf_pq(run):
    client, report = run["client"], run["report"]
    name = report.collection
    assert client.describe_alias(report.alias)["collection_name"] == name
    index = client.describe_index(name, "embedding")
    assert index["index_type"] == "IVF_PQ"
    chosen = report.index["params"]
    assert {key: int(index[key]) for key in ("nlist", "m", "nbits")} == {
        key: chosen[key] for key in ("nlist", "m", "nbits")}
    assert index["indexed_rows"] == index["total_rows"] == len(run["items"])
    stored = client.query(name, filter="item_id >= 0", output_fields=["item_id", "title"], limit=16384)
    assert sorted(row["item_id"] for row in stored) == sorted(run["items"]["item_id"])
    titles = run["items"].set_index("item_id")["title"]
    assert all(titles[row["item_id"]] == row["title"] for row in stored[:50])


def _brute_force(run, queries):
    """Top-100 of each held-out user's ``queries`` by plain numpy, seen items removed; raw item ids."""
    ids, vectors = item_vectors(run["model"])
    scores = queries @ vectors.T
    for row, user in enumerate(run["held_out"]["user_id"]):
        scores[row, np.searchsorted(ids, list(run["seen"][user]))] = -np.inf
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :100]]


def test_report_agrees_with_brute_force_within_ivf_pq_error(run):
    report, held_out, client, seen = run["report"], run["held_out"], run["client"], run["seen"]
    queries = user_queries(run["model"], held_out["user_id"].to_numpy(), run["train"])
    exact = _brute_force(run, queries)
    targets = held_out["item_id"].to_numpy()
    for k in KS:
        brute = float((exact[:, :k] == targets[:, None]).any(axis=1).mean())
        assert report.exact[f"hit_rate@{k}"] == pytest.approx(brute, abs=1e-3)

    # Milvus' own answers, fetched here directly, explain the model's numbers:
    # a hit can only change for users whose approximate top-k differs from the exact one.
    nprobe = report.index["params"]["nprobe"]
    approximate = []
    for start in range(0, len(held_out), 500):
        users = held_out["user_id"].to_numpy()[start:start + 500]
        limit = 100 + max(len(seen[user]) for user in users)
        hits = client.search(report.collection, data=queries[start:start + 500], limit=limit,
                             search_params={"metric_type": "IP", "params": {"nprobe": nprobe}})
        for user, found in zip(users, hits):
            kept = [hit["id"] for hit in found if hit["id"] not in seen[user]][:100]
            approximate.append(kept + [-1] * (100 - len(kept)))
    approximate = np.array(approximate)
    for k in KS:
        milvus_rate = float((approximate[:, :k] == targets[:, None]).any(axis=1).mean())
        assert report.model[f"hit_rate@{k}"] == pytest.approx(milvus_rate, abs=1e-3)
        differs = np.mean([set(a[:k]) != set(e[:k]) for a, e in zip(approximate, exact)])
        assert abs(report.model[f"hit_rate@{k}"] - report.exact[f"hit_rate@{k}"]) <= differs
    assert report.index_recall["recall@100"] > 0.8


def test_model_beats_popularity(run):
    report = run["report"]
    assert report.model["hit_rate@10"] > 1.2 * report.popularity["hit_rate@10"]
    popular = run["train"]["item_id"].value_counts()
    assert report.popularity["hit_rate@100"] > 0.1 and len(popular) > 100  # a real opponent


def test_flow_runs_and_artifacts_are_recorded(run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        mine = [r for r in client.read_flow_runs()
                if r.parameters.get("options", {}).get("report_dir") == str(run["report_dir"])
                and client.read_flow(r.flow_id).name == "pipeline"]
        assert len(mine) == 1 and mine[0].state.type.value == "COMPLETED"
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[mine[0].id])))
        names = {client.read_flow(r.flow_id).name: r for r in children}
        assert {name: r.state.type.value for name, r in names.items()} == {
            "train": "COMPLETED", "index": "COMPLETED", "evaluate": "COMPLETED"}
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["evaluation"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[names["evaluate"].id])))
    assert len(artifacts) == 1
    table = artifacts[0].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["k"] for row in table] == list(REPORT_KS)
    assert set(table[0]) == {"k", "model", "exact", "popularity", "random"}
    assert table[2]["model"] == round(run["report"].model["hit_rate@10"], 4)
