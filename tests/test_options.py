"""The flows' options objects (towerbridge/options.py): each refuses a bad value with a message
naming its field, takes its defaults from towerbridge/defaults.py, and reads back from the JSON
a deployment keeps. No Prefect, no Milvus: the objects are plain Pydantic models."""

import pytest
from pydantic import ValidationError

from towerbridge import defaults
from towerbridge.data.options import DataOptions
from towerbridge.milvus.schema import DEFAULT_ALIAS
from towerbridge.options import (
    EvaluateOptions,
    GateOptions,
    IndexOptions,
    IndexSettings,
    OptionError,
    PipelineOptions,
    RebuildOptions,
    TrainOptions,
    duration_seconds,
)
from towerbridge.towers.config import TowerConfig


def refusal(make) -> tuple[tuple, str]:
    """Where ``make()`` was refused (the field's path) and why."""
    with pytest.raises(ValidationError) as refused:
        make()
    [error] = refused.value.errors()
    cause = error.get("ctx", {}).get("error")
    return error["loc"], str(cause) if cause else error["msg"]


@pytest.mark.parametrize("make, where, message", [
    (lambda: IndexOptions(target_recall=1.5), ("target_recall",), "target_recall must be in (0, 1], got 1.5"),
    (lambda: IndexOptions(target_recall=0), ("target_recall",), "target_recall must be in (0, 1], got 0.0"),
    (lambda: IndexOptions(keep_versions=0), ("keep_versions",), "keep_versions must be at least 1, got 0"),
    (lambda: IndexOptions(alias="../../etc/cron"), ("alias",),
     "alias '../../etc/cron': Milvus names are letters, digits and underscores, not starting with a digit, "
     "at most 255 characters"),
    (lambda: IndexOptions(embed_workers=-1), ("embed_workers",),
     "embed_workers must be 0 (embed in this process) or more, got -1"),
    (lambda: IndexOptions(dask_address="10.0.0.5"), ("dask_address",),
     "dask_address '10.0.0.5': expected a scheduler address such as tcp://10.0.0.5:8786"),
    (lambda: IndexOptions(embed_shards=0), ("embed_shards",), "embed_shards must be 1 or more, got 0"),
    (lambda: IndexSettings(nlist=0), ("nlist",), "nlist must be at least 1, got 0"),
    (lambda: IndexSettings(nbits=17), ("nbits",), "nbits must be between 1 and 16, got 17"),
    (lambda: IndexSettings(index_type="scann", m=8), (),
     "m and nbits set IVF_PQ's codes; index_type scann has fixed 4-bit codes (leave them out)"),
    (lambda: EvaluateOptions(ks=[0]), ("ks",), "every k must be between 1 and 16384 (Milvus' search limit), got [0]"),
    (lambda: EvaluateOptions(ks=[10, 20_000]), ("ks",),
     "every k must be between 1 and 16384 (Milvus' search limit), got [10, 20000]"),
    (lambda: EvaluateOptions(ks=[]), ("ks",), "every k must be between 1 and 16384 (Milvus' search limit), got []"),
    (lambda: EvaluateOptions(eval_users=0), ("eval_users",), "eval_users (--eval-users) must be at least 1, got 0"),
    (lambda: TrainOptions(epochs=0), ("epochs",), "epochs must be at least 1, got 0"),
    (lambda: TrainOptions(time_budget=0.5), ("time_budget",), "time_budget must be at least 1 second, got 0.5"),
    (lambda: TrainOptions(time_budget="1h2x"), ("time_budget",),
     "'1h2x' is not a duration: give seconds (900) or hours, minutes and seconds such as 45m, 1h30m or 2h15m30s"),
    (lambda: TrainOptions(continue_from="/no/such/model"), (),
     "continue_from /no/such/model: no model directory there"),
    (lambda: RebuildOptions(continual_epochs=0), ("continual_epochs",), "continual_epochs must be at least 1, got 0"),
    (lambda: RebuildOptions(continual_budget="0s"), ("continual_budget",),
     "continual_budget must be at least 1 second, got 0.0"),
    (lambda: RebuildOptions(replay=2), ("replay",), "replay must be a fraction between 0 and 1, got 2.0"),
    (lambda: TrainOptions(train_processes=0), ("train_processes",),
     "train_processes must be a whole number of processes, 1 or more, got 0"),
    (lambda: TrainOptions(early_stopping_patience=-1), ("early_stopping_patience",),
     "early_stopping_patience must be 0 (off) or a positive patience, got -1"),
    (lambda: TrainOptions(vector_dim=1), (), "vector_dim must be at least 2, got 1"),  # the tower's own check
    (lambda: TrainOptions(tower_settings={"dropout": 1.5}), (), "dropout must be in [0, 1), got 1.5"),
    (lambda: TrainOptions(tower_settings={"gated_blocks": "false"}), (),
     "model setting gated_blocks must be true or false, got 'false'"),
    (lambda: TrainOptions(tower_settings={"attention_block": 3}), (), "unknown model settings ['attention_block']; "
     "known: " + str(sorted(TowerConfig.__dataclass_fields__))),
    (lambda: TrainOptions(tower_settings={"epochs": 3, "seed": 1, "dropout": 0.2}), (),
     "tower_settings cannot set epochs, seed: give epochs, seed instead"),
    (lambda: TrainOptions(data=DataOptions(), prepared_dir="/prepared"), (),
     "give the train flow data or prepared_dir, not both"),
    (lambda: GateOptions(tolerance=-0.1), ("tolerance",), "tolerance must be 0 or more, got -0.1"),
    (lambda: GateOptions(confidence=1.0), ("confidence",),
     "confidence must be between 0 and 1 (exclusive, e.g. 0.95), got 1.0"),
    (lambda: GateOptions(confidence=0), ("confidence",),
     "confidence must be between 0 and 1 (exclusive, e.g. 0.95), got 0.0"),
    (lambda: GateOptions(metrics=["hit_rate@7"]), ("metrics",),
     "metrics: 'hit_rate@7' is not one of hit_rate, recall, ndcg, mrr at k 1, 5, 10, 20, 50 or 100 (e.g. hit_rate@10)"),
    (lambda: GateOptions(metrics=[]), ("metrics",), "metrics: name at least one metric, e.g. hit_rate@10"),
    (lambda: RebuildOptions(retries=-1), ("retries",), "retries must be 0 or more, got -1"),
    (lambda: RebuildOptions(lock_timeout_s=-5), ("lock_timeout_s",), "lock_timeout_s must be 0 or more, got -5.0"),
    (lambda: PipelineOptions(index=IndexOptions(index_params=IndexSettings(m=7))), (),
     "m 7 must divide the vector dimension 65 (of the sequence tower)"),
    (lambda: PipelineOptions(train=TrainOptions(user_tower="id"), index=IndexOptions(index_params={"m": 5})), (),
     "m 5 must divide the vector dimension 32 (of the id tower)"),
    (lambda: RebuildOptions(train=TrainOptions(data=DataOptions(protocol="tfrs")), index={"index_params": {"m": 5}}),
     (), "m 5 must divide the vector dimension 32 (of the id tower)"),  # tfrs trains the id tower by default
    (lambda: RebuildOptions(evaluate=EvaluateOptions(ks=[5])), (),
     "metrics hit_rate@10, ndcg@10: the evaluation does not report that k (ks [5])"),
])
def test_a_bad_value_is_refused_with_a_message_naming_its_field(make, where, message):
    assert refusal(make) == (where, message)


def test_the_gate_metrics_must_be_at_a_k_the_evaluation_reports():
    gate, evaluate = GateOptions(metrics=["hit_rate@10", "hit_rate@20"]), EvaluateOptions(ks=[10])
    assert refusal(lambda: RebuildOptions(gate=gate, evaluate=evaluate)) == (
        (), "metrics hit_rate@20: the evaluation does not report that k (ks [10])")
    accepted = RebuildOptions(gate=GateOptions(metrics=["recall@50"]), evaluate=EvaluateOptions(ks=[50]))
    assert accepted.gate.metrics == ("recall@50",)


def test_the_command_line_names_its_own_options_in_the_same_messages():
    error = refusal(lambda: IndexOptions(keep_versions=0))
    assert error[1] == "keep_versions must be at least 1, got 0"
    with pytest.raises(ValidationError) as refused:
        IndexSettings(index_type="SCANN", nbits=4)
    cause = refused.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, OptionError)
    names = {"m": "--m", "nbits": "--nbits", "index_type": "--index"}
    assert cause.says(names.__getitem__) == ("--m and --nbits set IVF_PQ's codes; --index scann has fixed 4-bit "
                                             "codes (leave them out)")


def test_unknown_and_mistyped_values_are_refused_where_they_are():
    assert refusal(lambda: RebuildOptions.model_validate({"index": {"keep_version": 2}})) == (
        ("index", "keep_version"), "Extra inputs are not permitted")
    assert refusal(lambda: RebuildOptions.model_validate({"train": {"data": {"datset": "movielens-1m"}}}))[0] == (
        "train", "data", "datset")
    assert refusal(lambda: TrainOptions(user_tower="transformer"))[1] == "Input should be 'sequence', 'pooled' or 'id'"
    assert refusal(lambda: IndexSettings(index_type="HNSW"))[1] == "Input should be 'AUTO', 'IVF_PQ' or 'SCANN'"


def test_defaults_are_the_ones_in_defaults_py():
    train, index, evaluate, gate = TrainOptions(), IndexOptions(), EvaluateOptions(), GateOptions()
    assert (train.data, train.prepared_dir, train.user_tower, train.epochs) == (None, None, None, None)
    assert train.train_processes == defaults.TRAIN_PROCESSES == 1
    assert (train.use_features, train.early_stopping_patience, train.seed) == (
        TowerConfig.use_features, TowerConfig.early_stopping_patience, TowerConfig.seed)
    assert index.alias == DEFAULT_ALIAS == "towerbridge_items"
    assert index.index_params == IndexSettings(index_type=defaults.INDEX_TYPE) == IndexSettings(index_type="auto")
    assert (index.keep_versions, index.target_recall) == (defaults.KEEP_VERSIONS, defaults.TARGET_RECALL) == (3, 0.95)
    assert (index.embed_workers, index.dask_address) == (defaults.EMBED_WORKERS, None) == (0, None)
    assert evaluate.ks == defaults.REPORT_KS == (1, 5, 10, 20, 50, 100)
    assert (evaluate.eval_users, evaluate.seed) == (defaults.EVAL_USERS, defaults.EVALUATION_SEED) == (10_000, 0)
    assert gate.metrics == defaults.GATE_METRICS == ("hit_rate@10", "ndcg@10")
    assert (gate.tolerance, gate.confidence) == (defaults.GATE_TOLERANCE, defaults.GATE_CONFIDENCE) == (0.005, 0.95)
    rebuild = RebuildOptions()
    assert (rebuild.train, rebuild.index, rebuild.evaluate, rebuild.gate) == (train, index, evaluate, gate)
    assert (rebuild.reuse_model, rebuild.milvus_uri) == (False, None)
    assert (rebuild.lock_timeout_s, rebuild.retries) == (defaults.REBUILD_LOCK_TIMEOUT_S, defaults.REBUILD_RETRIES)
    assert (rebuild.continual_epochs, rebuild.continual_budget, rebuild.replay) == (
        defaults.CONTINUAL_EPOCHS, defaults.CONTINUAL_BUDGET_S, None) == (10, 1800.0, None)
    assert RebuildOptions(continual_budget="45m").continual_budget == 2700
    assert (PipelineOptions().report_dir, PipelineOptions().milvus_uri) == (None, None)
    assert DataOptions() == DataOptions(dataset=defaults.DATASET, protocol=defaults.PROTOCOL)


def test_a_training_budget_is_seconds_or_a_duration():
    assert [TrainOptions(time_budget=text).time_budget for text in ("900", "900s", "45m", "1h30m", "2h15m30s")] == [
        900, 900, 2700, 5400, 8130]
    assert TrainOptions(time_budget=120).time_budget == 120
    for text in ("", "m", "30m1h", "1h1h", "inf", "5 minutes"):
        with pytest.raises(ValueError, match="is not a duration"):
            duration_seconds(text)


def test_values_are_normalised_once_and_the_objects_are_frozen():
    assert EvaluateOptions(ks=[100, 10, 50, 10]).ks == (10, 50, 100)
    assert IndexSettings(index_type="scann", nlist=40).overrides() == {"index_type": "SCANN", "nlist": 40}
    assert IndexSettings().overrides() == {"index_type": "AUTO"}
    with pytest.raises(ValidationError, match="frozen"):
        IndexOptions().keep_versions = 0


def test_the_tower_config_is_the_chosen_tower_or_the_protocols():
    assert TrainOptions().tower_config("leave-last-out").user_tower == defaults.DEFAULT_USER_TOWER
    assert TrainOptions().tower_config("tfrs").user_tower == defaults.RANDOM_SPLIT_USER_TOWER
    config = TrainOptions(user_tower="pooled", epochs=3, vector_dim=17, temperature=0.2, use_features=False,
                          seed=9, time_budget=600).tower_config("tfrs")
    assert (config.user_tower, config.epochs, config.vector_dim, config.temperature, config.use_features,
            config.seed, config.time_budget) == ("pooled", 3, 17, 0.2, False, 9, 600)
    # any other setting by name, over the tower's defaults; the rest keep them
    config = TrainOptions(tower_settings={"gated_blocks": False, "attention_blocks": 3}, epochs=2).tower_config(
        "leave-last-out")
    assert (config.gated_blocks, config.attention_blocks, config.epochs) == (False, 3, 2)
    assert config.feed_forward_mult == TowerConfig().feed_forward_mult and TowerConfig().gated_blocks


def test_options_read_back_from_a_deployments_json():
    options = RebuildOptions(train=TrainOptions(data=DataOptions("movielens-100k", "/data/ml-100k"), epochs=2),
                             index=IndexOptions(alias="items_nightly", index_params=IndexSettings(index_type="SCANN")),
                             gate=GateOptions(tolerance=0.01), reuse_model=True)
    stored = options.model_dump(mode="json", exclude_defaults=True)
    assert stored == {"train": {"data": {"dataset": "movielens-100k", "data_dir": "/data/ml-100k"}, "epochs": 2},
                      "index": {"alias": "items_nightly", "index_params": {"index_type": "SCANN"}},
                      "gate": {"tolerance": 0.01}, "reuse_model": True}
    assert RebuildOptions.model_validate(stored) == options


def test_prepared_data_replaces_the_data_to_prepare():
    options = PipelineOptions(train=TrainOptions(data=DataOptions("movielens-100k"), epochs=4))
    prepared = options.with_prepared("/home/prepared/1")
    assert (prepared.train.data, prepared.train.prepared_dir, prepared.train.epochs) == (None, "/home/prepared/1", 4)
    assert prepared.index == options.index and prepared.evaluate == options.evaluate
    assert options.train.prepared_dir is None  # a new object; the first is unchanged
