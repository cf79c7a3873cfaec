"""The pipeline on the real MovieLens 100K, both protocols (skipped where ../shared is absent)."""

import pytest

from tests.conftest import SHARED_ML100K
from towerbridge.data.options import DataOptions
from towerbridge.flows.pipeline import pipeline
from towerbridge.options import PipelineOptions, TrainOptions
from towerbridge.towers import artifact

pytestmark = pytest.mark.skipif(not SHARED_ML100K.is_dir(), reason=f"MovieLens 100K not found at {SHARED_ML100K}")


# the default tower by protocol: the sequence tower, but the id tower for tfrs' random split
@pytest.mark.parametrize("protocol, interactions, users, tower", [("leave-last-out", 943, 943, "sequence"),
                                                                  ("tfrs", 20_000, 941, "id")])
def test_movielens_through_milvus_beats_popularity(milvus_uri, prefect_harness, tmp_path, protocol, interactions,
                                                   users, tower):
    data = DataOptions("movielens-100k", str(SHARED_ML100K), protocol=protocol)
    report = pipeline(PipelineOptions(train=TrainOptions(data=data, epochs=5),  # 32 by default: BENCHMARKS.md
                                      report_dir=str(tmp_path), milvus_uri=milvus_uri))
    assert (report.dataset, report.protocol) == ("movielens-100k", protocol)
    assert artifact.load(report.model_dir).config.user_tower == tower
    assert report.interactions_evaluated == interactions and report.users_evaluated == users
    for k in (10, 100):
        assert report.model[f"hit_rate@{k}"] > report.popularity[f"hit_rate@{k}"]
    # nprobe is tuned after the build: recall of Milvus against exact search on these embeddings
    assert report.index["tuning"]["recall"] >= 0.95
    assert report.index_recall["recall@100"] >= 0.95
