"""The nightly rebuild on the real embedded Milvus under Prefect's test harness: versions and
the alias, rejected and rolled-back candidates, readers during a rebuild, and the scheduled
deployment. Milvus going away mid-rebuild (killed, or stopped cleanly) is in
tests/reliability/test_faults.py."""

import threading

import numpy as np
import pytest
from prefect import task

import towerbridge.flows.rebuild as rebuild_flow
from tests.conftest import run_rebuild, write_synthetic
from towerbridge import defaults, settings
from towerbridge.data.options import DataOptions
from towerbridge.milvus.store import ItemStore
from towerbridge.options import IndexOptions, RebuildOptions, TrainOptions

ALIAS = "rebuild_test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("rebuild-data"), n_users=900, n_items=1200, n_topics=12, seed=31)


def run(uri, data_dir, alias=ALIAS, **options):
    return run_rebuild(data_dir, alias, uri, **{"epochs": 2, "tolerance": 0.03, **options})


@pytest.fixture(scope="module")
def two_rebuilds(milvus_uri, prefect_harness, data_dir):
    # both from scratch: the same model twice (continual rebuilds: test_continual.py)
    return [run(milvus_uri, data_dir, from_scratch=True) for _ in range(2)]


def test_two_rebuilds_make_two_versions_and_the_alias_moves_to_the_second(two_rebuilds, store):
    (first_state, first), (second_state, second) = two_rebuilds
    assert first_state.is_completed() and second_state.is_completed()
    assert first["outcome"] == second["outcome"] == "swapped"
    assert (first["serving_before"], first["serving_after"]) == (None, first["built"]["collection"])
    assert (second["serving_before"], second["serving_after"]) == (first["serving_after"],
                                                                  second["built"]["collection"])
    assert store.versions(ALIAS) == [first["serving_after"], second["serving_after"]]
    assert store.alias_target(ALIAS) == second["serving_after"]
    assert "no version serves yet" in first["decision"]["checks"][2]["detail"]
    compared = second["decision"]["checks"][2]
    # the same data, seed and settings: the same model; only the two IVF_PQ builds may differ
    assert compared["passed"] and compared["detail"].startswith(
        f"candidate is not shown to be worse, on the same 898 users (serving "
        f"{first['serving_after']}): hit_rate@10 ")
    assert all(m["low"] <= 0 <= m["high"] and abs(m["difference"]) < 0.01 for m in second["comparison"]["metrics"])
    record = store.record(second["serving_after"])
    assert record.complete and record.served_since and record.evaluated_metric("hit_rate@10") > 0
    assert record.gate.to_dict() == second["comparison"]
    text = (settings.state_dir("rebuilds") / str(second_state.state_details.flow_run_id) / "rebuild.md").read_text()
    assert text.startswith(f"# Rebuild of `{ALIAS}`: swapped") and "| hit_rate@10 |" in text


def test_each_rebuild_leaves_a_markdown_artifact(two_rebuilds):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    (_, _), (state, _) = two_rebuilds
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    markdown = [a for a in artifacts if a.key == "rebuild-rebuild-test"]
    assert len(markdown) == 1 and "swapped" in markdown[0].data


def test_a_rejected_candidate_leaves_the_alias_and_no_orphan(two_rebuilds, milvus_uri, data_dir, store):
    before = (store.versions(ALIAS), store.alias_target(ALIAS))
    # 5 one-bit codes per vector: no nprobe brings recall near the target, so validation fails
    # (the catalog has over 1,024 items: Milvus 2.3 searches smaller segments exactly, index or not).
    state, summary = run(milvus_uri, data_dir, index_params={"m": 5, "nbits": 1}, reuse_model=True)
    assert state.is_failed() and summary["outcome"] == "rejected"
    assert "index recall: recall@100 against exact search" in summary["decision"]["reason"]
    assert summary["candidate_dropped"] is True
    assert (store.versions(ALIAS), store.alias_target(ALIAS)) == before


def test_a_failure_after_the_swap_puts_the_alias_back(two_rebuilds, milvus_uri, data_dir, store, monkeypatch):
    before = (store.versions(ALIAS), store.alias_target(ALIAS))

    @task(name="verify-serving")
    def failing_check(uri, alias, collection, model_dir):
        assert ItemStore(uri).alias_target(alias) == collection  # the swap did happen
        raise RuntimeError("injected failure after the swap")

    monkeypatch.setattr(rebuild_flow, "verify_serving", failing_check)
    state, summary = run(milvus_uri, data_dir, reuse_model=True)
    assert state.is_failed() and "injected failure after the swap" in summary["error"]
    assert summary["candidate_dropped"] is True
    assert (store.versions(ALIAS), store.alias_target(ALIAS)) == before


def dimension(store, collection: str) -> int:
    fields = store.client.describe_collection(collection)["fields"]
    return int(next(field for field in fields if field["name"] == "embedding")["params"]["dim"])


def test_readers_of_the_alias_see_no_failure_during_a_rebuild(two_rebuilds, milvus_uri, data_dir, store):
    before = store.alias_target(ALIAS)
    vectors = np.random.default_rng(0).standard_normal((4, dimension(store, before))).astype(np.float32)
    done, answers, failures = threading.Event(), [], []

    def analyst():
        reader = ItemStore(milvus_uri)
        while not done.is_set():
            try:
                ids, scores = reader.search(ALIAS, vectors, 10, 8)
                answers.append(int(np.isfinite(scores).all(axis=1).sum()))
            except Exception as error:  # any failure at all is what this test is about
                failures.append(repr(error))
        reader.close()

    thread = threading.Thread(target=analyst)
    thread.start()
    try:
        state, summary = run(milvus_uri, data_dir, reuse_model=True)
    finally:
        done.set()
        thread.join()
    assert state.is_completed() and summary["serving_after"] != before
    assert failures == []
    assert len(answers) > 20 and all(full == len(vectors) for full in answers)


def test_a_scann_rebuild_validates_records_and_serves_with_its_settings(two_rebuilds, milvus_uri, data_dir, store):
    # last of the rebuilds here: a SCANN version of this model's odd-dimensional vectors stores one
    # dimension more, so the fixed-size raw vectors of the readers' test above would not fit it
    state, summary = run(milvus_uri, data_dir, index_params={"index_type": "SCANN"}, reuse_model=True)
    assert state.is_completed() and summary["outcome"] == "swapped"
    built = summary["built"]
    assert built["index"]["index_type"] == "SCANN" and built["reorder_k"] >= 100
    assert built["index_recall@100"] >= 0.95
    assert store.describe_index(store.alias_target(ALIAS))["index_type"] == "SCANN"
    recall_check = summary["decision"]["checks"][1]
    assert recall_check["passed"] and f"reorder_k {built['reorder_k']}" in recall_check["detail"]
    record = store.record(summary["serving_after"])
    assert (record.index_type, record.reorder_k, record.served_since is not None) == \
        ("SCANN", built["reorder_k"], True)
    text = (settings.state_dir("rebuilds") / str(state.state_details.flow_run_id) / "rebuild.md").read_text()
    assert f"SCANN nlist {built['index']['params']['nlist']}, tuned nprobe {built['nprobe']}, reorder_k" in text


def test_the_nightly_deployment_has_its_schedule_time_zone_and_limit(prefect_harness):
    from prefect.client.orchestration import get_client

    options = RebuildOptions(train=TrainOptions(data=DataOptions("movielens-100k")),
                             index=IndexOptions(alias="nightly_test"))
    rebuild_flow.nightly(cron="30 3 * * *", timezone="Europe/London", options=options).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("rebuild/nightly")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("30 3 * * *", "Europe/London")
    assert deployment.schedules[0].active
    assert deployment.global_concurrency_limit.limit == 1
    # what differs from the defaults, as JSON
    assert deployment.parameters == {"options": {"train": {"data": {"dataset": "movielens-100k"}},
                                                 "index": {"alias": "nightly_test"}}}
    # the server holds the options object's schema: the deployment's form, and what its runs are checked against
    schema = rebuild_flow.rebuild.parameters.model_dump()
    assert deployment.parameter_openapi_schema["properties"]["options"]["$ref"] == "#/definitions/RebuildOptions"
    assert deployment.parameter_openapi_schema["definitions"] == schema["definitions"]
    # a scheduled run gets its parameters as JSON; the flow reads them as the options object
    validated = rebuild_flow.rebuild.validate_parameters(deployment.parameters)
    assert validated["options"] == options
    assert validated["options"].train.data == DataOptions("movielens-100k")
    default = rebuild_flow.nightly(name="nightly-default")
    assert (default.schedules[0].schedule.cron, default.schedules[0].schedule.timezone) == ("0 2 * * *", "UTC")
    assert default.parameters == {"options": {}}


def test_the_rebuild_deployment_shows_the_options_object_as_its_one_parameter():
    schema = rebuild_flow.rebuild.parameters.model_dump()
    assert list(schema["properties"]) == ["options"]
    assert schema["properties"]["options"]["$ref"] == "#/definitions/RebuildOptions"
    assert schema["properties"]["options"]["default"] == RebuildOptions().model_dump(mode="json")
    options = schema["definitions"]["RebuildOptions"]
    assert list(options["properties"]) == ["train", "index", "evaluate", "gate", "reuse_model", "from_scratch",
                                           "continual_epochs", "replay", "continual_budget", "milvus_uri",
                                           "lock_timeout_s", "retries"]
    assert options["additionalProperties"] is False  # a misspelt option is refused, not ignored
    for name in ("TrainOptions", "IndexOptions", "IndexSettings", "EvaluateOptions", "GateOptions", "DataOptions"):
        assert name in schema["definitions"], name
    index = schema["definitions"]["IndexOptions"]["properties"]
    assert index["keep_versions"]["default"] == defaults.KEEP_VERSIONS
    assert index["keep_versions"]["description"].startswith("complete versions of the alias kept")
    gate = schema["definitions"]["GateOptions"]["properties"]
    assert (gate["metrics"]["default"], gate["tolerance"]["default"], gate["confidence"]["default"]) == (
        list(defaults.GATE_METRICS), defaults.GATE_TOLERANCE, defaults.GATE_CONFIDENCE)
    deployment = rebuild_flow.nightly(options=RebuildOptions(index=IndexOptions(alias="schema_test")))
    assert deployment.parameters == {"options": {"index": {"alias": "schema_test"}}}
    # and a deployment's parameters are checked by the same validators as the command line's
    with pytest.raises(Exception, match="keep_versions must be at least 1, got 0"):
        rebuild_flow.rebuild.validate_parameters({"options": {"index": {"keep_versions": 0}}})
