"""A version's record: one writer, one reader, records written before its format still load."""

import json
from dataclasses import replace

import pytest

from tests.factories import comparison
from towerbridge.errors import CollectionError
from towerbridge.milvus.index import Fallback, SearchParams
from towerbridge.milvus.record import FORMAT, Tuning, VersionEvaluation, VersionRecord

EVALUATION = {"dataset": "movielens-100k", "protocol": "leave-last-out", "users": 943,
              "model": {"hit_rate@10": 0.21, "ndcg@10": 0.11}, "evaluated_at": "2026-11-02T02:40:00Z"}


def written_before_the_format() -> tuple[str, dict[str, str]]:
    """A version as towerbridge recorded it before the format: the build's dict plus
    ``id_type`` as the description (an id-tower model: no ``user_tower``; IVF_PQ: no
    ``pad_dims``), each later value a JSON property (a tuning from before ``reached_target``)."""
    description = json.dumps({
        "model_id": "m-old", "model_dir": "/models/m-old", "alias": "items", "dataset": "movielens-100k",
        "created_at": "2026-11-01T02:00:00Z", "index_type": "IVF_PQ", "metric_type": "IP",
        "params": {"nlist": 43, "m": 33, "nbits": 8, "nprobe": 16}, "id_type": "int64"}, sort_keys=True)
    later = {"nprobe": 8, "tuning": {"target_recall": 0.95, "k": 100, "queries": 943, "recall": 0.9712},
             "complete": True, "completed_at": "2026-11-01T02:30:00Z", "evaluation": EVALUATION,
             "served_since": "2026-11-01T02:31:00Z"}
    properties = {f"towerbridge.{key}": json.dumps(value) for key, value in later.items()}
    return description, {**properties, "collection.ttl.seconds": "0"}  # Milvus' own properties are not ours


def test_a_record_written_before_the_format_loads_with_its_defaults():
    record = VersionRecord.read(*written_before_the_format())
    assert record == VersionRecord(
        model_id="m-old", model_dir="/models/m-old", alias="items", dataset="movielens-100k",
        created_at="2026-11-01T02:00:00Z", user_tower="id", id_type="int64", index_type="IVF_PQ", metric_type="IP",
        params={"nlist": 43, "m": 33, "nbits": 8, "nprobe": 16}, pad_dims=0, nprobe=8, reorder_k=None,
        tuning=Tuning(target_recall=0.95, k=100, queries=943, recall=0.9712, reached_target=None),
        complete=True, completed_at="2026-11-01T02:30:00Z", evaluation=VersionEvaluation(**EVALUATION),
        served_since="2026-11-01T02:31:00Z")
    assert record.search_params() == SearchParams(8)
    assert record.evaluated_metric("hit_rate@10") == 0.21 and record.evaluated_metric("recall@10") is None
    # what evaluation.json says of the tuning is what was stored: no reached_target added
    assert record.tuning.to_dict() == {"target_recall": 0.95, "k": 100, "queries": 943, "recall": 0.9712}
    assert record.evaluation.to_dict() == EVALUATION


def test_a_collection_with_no_record_of_ours_reads_as_a_record_without_a_model():
    for description in ("", "made by someone else", "[1, 2]", json.dumps({"id_type": "string"})):
        record = VersionRecord.read(description, {})
        assert record.model_dir is None and record.complete is False and record.search_params() == SearchParams(1)
    assert VersionRecord.read(json.dumps({"id_type": "string"}), None).id_type == "string"


def test_search_settings_are_the_tuned_ones_else_the_builds():
    scann = VersionRecord(index_type="SCANN", params={"nlist": 64, "nprobe": 8, "reorder_k": 800}, pad_dims=1)
    assert scann.search_params() == SearchParams(8, 800, pad=1, nlist=64)  # nlist: how far a wide search may probe
    tuned = VersionRecord.from_dict({"params": {"nlist": 64, "nprobe": 8, "reorder_k": 800}, "pad_dims": 1,
                                     "nprobe": 32, "reorder_k": 400})
    assert tuned.search_params() == SearchParams(32, 400, pad=1, nlist=64)
    ivf_pq = VersionRecord(index_type="IVF_PQ", params={"nlist": 64, "m": 8, "nbits": 8, "nprobe": 8})
    assert ivf_pq.search_params() == SearchParams(8)  # an IVF_PQ version has no reorder_k


def test_what_is_written_reads_back_equal():
    created = VersionRecord(model_id="m2", model_dir="/models/m2", alias="items", dataset="synthetic",
                            created_at="2026-12-05T02:00:00Z", user_tower="sequence", id_type="string",
                            index_type="SCANN", metric_type="IP", params={"nlist": 20, "nprobe": 8, "reorder_k": 6400},
                            pad_dims=1, index_fallback=Fallback(recall=0.77, nprobe=64, items=10**6, target=0.95,
                                                                seen_in="items_v1"))
    description = json.loads(created.description())
    assert description["format"] == FORMAT and description["pad_dims"] == 1 and "nprobe" not in description
    assert description["index_fallback"]["seen_in"] == "items_v1"
    later = {"nprobe": 4, "reorder_k": 200, "complete": True, "completed_at": "2026-12-05T02:10:00Z",
             "tuning": Tuning(target_recall=0.95, k=100, queries=500, recall=0.96, reached_target=True),
             "evaluation": VersionEvaluation(**EVALUATION), "served_since": "2026-12-05T02:11:00Z",
             "gate": comparison(-0.01, note="3 users the serving model was not trained on", unknown_users=3)}
    properties = VersionRecord.properties(**later)
    assert json.loads(properties["towerbridge.gate"])["metrics"][0]["metric"] == "hit_rate@10"
    assert json.loads(properties["towerbridge.tuning"]) == {"target_recall": 0.95, "k": 100, "queries": 500,
                                                            "recall": 0.96, "reached_target": True}
    assert VersionRecord.read(created.description(), properties) == replace(created, **later)


def test_later_values_are_typed_and_unknown_keys_refused():
    with pytest.raises(ValueError, match="model_dir, nprob: not a field set after a version is created"):
        VersionRecord.properties(nprob=8, model_dir="/elsewhere")
    with pytest.raises(TypeError, match="nprobe is recorded as int, got '8'"):
        VersionRecord.properties(nprobe="8")
    with pytest.raises(TypeError, match="tuning is recorded as Tuning"):
        VersionRecord.properties(tuning={"recall": 0.9})
    with pytest.raises(TypeError, match="complete is recorded as bool, got 1"):
        VersionRecord.properties(complete=1)
    with pytest.raises(ValueError, match="nprobe, complete: set after a version is created"):
        VersionRecord(model_id="m", nprobe=8, complete=True).description()


def test_a_record_of_an_unknown_format_is_refused_with_the_collection_named():
    with pytest.raises(CollectionError, match="items_v9: record format 'towerbridge-version/9', this towerbridge "
                                              "reads towerbridge-version/2"):
        VersionRecord.read(json.dumps({"format": "towerbridge-version/9"}), {}, "items_v9")
