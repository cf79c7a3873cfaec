"""SCANN versions on the real embedded Milvus: built, tuned (nprobe and reorder_k), recorded,
and searched with the version's own settings by evaluation and analysts' commands."""

import numpy as np
import pytest

from tests.conftest import towerbridge, train_synthetic
from towerbridge import analyst, defaults, steps
from towerbridge.milvus.index import REORDER_FACTORS, SearchParams
from towerbridge.milvus.server import SMALLEST_INDEXED_SEGMENT
from towerbridge.towers import artifact
from towerbridge.towers.vectors import item_vectors

ALIAS = "scann_test"
N_ITEMS = 1200  # above Milvus' smallest indexed segment, so the index is really built and searched


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_synthetic(tmp_path_factory.mktemp("scann"), n_users=900, n_items=N_ITEMS, n_topics=12, seed=3)


@pytest.fixture(scope="module")
def built(milvus_uri, model_dir):
    return steps.index_model(model_dir, milvus_uri, alias=ALIAS, progress=False, index_params={"index_type": "SCANN"})


def test_a_scann_version_is_built_tuned_and_recorded(built, store):
    assert N_ITEMS >= SMALLEST_INDEXED_SEGMENT
    index = store.describe_index(built.collection)
    assert index["index_type"] == "SCANN" and int(index["indexed_rows"]) == N_ITEMS
    assert built.index["index_type"] == "SCANN" and set(built.index["params"]) == {"nlist", "nprobe", "reorder_k"}
    assert built.index_recall >= defaults.TARGET_RECALL
    assert built.reorder_k in {100 * factor for factor in REORDER_FACTORS}
    record = store.record(built.collection)
    assert (record.index_type, record.nprobe, record.reorder_k) == ("SCANN", built.nprobe, built.reorder_k)
    assert record.tuning.reached_target is True


def test_scann_searches_rank_by_the_exact_scores(built, store, model_dir):
    """Re-ranking on the raw vectors: the scores Milvus returns are the exact inner products."""
    trained = artifact.load(model_dir)
    ids, vectors = item_vectors(trained)
    queries = vectors[:20].copy()
    tuned = store.record(built.collection).search_params()
    assert tuned == SearchParams(built.nprobe, built.reorder_k, pad=queries.shape[1] % 2,  # odd: one zero appended
                                 nlist=built.index["params"]["nlist"])
    found, scores = store.search(ALIAS, queries, 10, tuned)
    row = {item: position for position, item in enumerate(ids.tolist())}
    exact = np.einsum("qd,qkd->qk", queries, vectors[np.vectorize(row.get)(found)])
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4)


def test_a_search_wider_than_the_tuned_re_ranking_gets_every_hit(built, store, model_dir):
    """Milvus needs reorder_k >= limit; the store widens it for wide searches."""
    trained = artifact.load(model_dir)
    _, vectors = item_vectors(trained)
    limit = built.reorder_k + 50
    found, scores = store.search(ALIAS, vectors[:3], limit, store.record(built.collection).search_params())
    assert found.shape == (3, limit) and np.isfinite(scores).all()


def test_a_search_wider_than_the_tuned_re_ranking_probes_as_many_more_lists():
    scann = SearchParams(8, 200, nlist=30)
    assert scann.for_limit(100) == {"nprobe": 8, "reorder_k": 200}  # within the tuning: as tuned
    assert scann.for_limit(250) == {"nprobe": 10, "reorder_k": 250}  # 8 x 250 / 200
    assert scann.for_limit(2000) == {"nprobe": 30, "reorder_k": 2000}  # at most every list
    assert SearchParams(8, None, nlist=30).for_limit(250) == {"nprobe": 8}  # IVF_PQ: no re-ranking to widen


def test_analysts_and_evaluation_use_the_versions_settings(built, store, model_dir, tmp_path):
    trained = artifact.load(model_dir)
    user = str(trained.user_ids[0])
    assert len(analyst.recommend(store, ALIAS, user=user, k=10)) == 10
    item = str(trained.item_ids[0])
    similar = analyst.similar(store, ALIAS, item, k=5)
    assert len(similar) == 5 and all(hit["item_id"] != int(item) for hit in similar)
    ids, vectors = item_vectors(trained)  # the model's own vectors, unpadded: the prior is last
    row = {value: position for position, value in enumerate(ids.tolist())}
    expected = analyst.cosine(vectors[row[int(item)], :-1], vectors[[row[hit["item_id"]] for hit in similar], :-1])
    np.testing.assert_allclose([hit["cosine"] for hit in similar], expected, atol=1e-5)
    listed = analyst.versions(store, ALIAS)[0]
    assert (listed["index_type"], listed["nprobe"], listed["reorder_k"]) == ("SCANN", built.nprobe, built.reorder_k)
    report = steps.evaluate_model(model_dir, store.uri, built.collection, str(tmp_path), ks=(10, 100),
                                  eval_users=300)
    assert report.index["index_type"] == "SCANN"
    assert (report.index["params"]["nprobe"], report.index["params"]["reorder_k"]) == (built.nprobe, built.reorder_k)
    assert report.index_recall["recall@100"] >= 0.9


def test_auto_falls_back_to_scann_where_ivf_pq_falls_short_and_remembers_it(milvus_uri, model_dir, store):
    # AUTO (the default): asked for recall 1.0, IVF_PQ's 8-bit codes cannot order every near-tie,
    # SCANN's exact re-ranking can (where IVF_PQ meets the target it stays: every other default
    # build in the suite)
    first = steps.index_model(model_dir, milvus_uri, alias="auto_scann", progress=False, target_recall=1.0)
    assert first.index["index_type"] == "SCANN" and first.index_recall == 1.0
    fallback = first.index_fallback
    assert fallback["recall"] < 1.0 and fallback["target"] == 1.0 and fallback["items"] == N_ITEMS
    assert fallback["seen_in"] is None and fallback["nprobe"] >= 1
    assert store.versions("auto_scann") == [first.collection]  # the IVF_PQ version was dropped
    assert {"ivf_pq_insert_s", "ivf_pq_index_s", "ivf_pq_tune_s", "index_s"} <= set(first.timing)
    record = store.record(first.collection)
    assert record.index_fallback.to_dict() == fallback
    assert record.index_fallback.describe().startswith(
        f"SCANN: IVF_PQ reached recall@100 {fallback['recall']:.3f} (nprobe {fallback['nprobe']}) on "
        f"{N_ITEMS:,} items, short of the target 1")

    # the next build of a catalog that size goes straight to SCANN, saying where IVF_PQ fell short
    second = steps.index_model(model_dir, milvus_uri, alias="auto_scann", progress=False, target_recall=1.0)
    assert second.index["index_type"] == "SCANN" and not any(key.startswith("ivf_pq_") for key in second.timing)
    assert second.index_fallback == {**fallback, "seen_in": first.collection}
    assert store.record(second.collection).index_fallback.describe().startswith(f"SCANN, as for {first.collection}")
    listed = analyst.versions(store, "auto_scann")[0]
    assert listed["index_fallback"].startswith(f"SCANN, as for {first.collection}")
    shown = towerbridge("collections", "--alias", "auto_scann", "--milvus-uri", milvus_uri)
    assert shown.returncode == 0 and "(auto)" in shown.stdout.splitlines()[1]
