"""Training of the id tower, artifacts and cold start on a small synthetic catalog (the
history towers' own training: test_history.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from towerbridge.data.split import leave_last_one_out
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import ConfigError
from towerbridge.towers import artifact
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.train import train
from towerbridge.towers.vectors import item_vectors, user_vectors


def id_tower(**settings) -> TowerConfig:
    return TowerConfig(user_tower="id", **settings)


CONFIG = id_tower(epochs=3, batch_size=256, seed=1)


@pytest.fixture(scope="module")
def data():
    interactions, items = generate(SyntheticSpec(n_users=800, n_items=400, n_topics=16, seed=3))
    return leave_last_one_out(interactions)[0], items


def test_same_seed_same_model(data):
    interactions, items = data
    first = train(interactions, items, None, CONFIG, progress=False)
    second = train(interactions, items, None, CONFIG, progress=False)
    np.testing.assert_array_equal(item_vectors(first)[1], item_vectors(second)[1])
    assert first.history[-1]["loss_per_example"] < first.history[0]["loss_per_example"]


def test_artifact_round_trip_gives_the_same_vectors(data, tmp_path):
    interactions, items = data
    trained = train(interactions, items, None, CONFIG, progress=False)
    directory = artifact.save(trained, tmp_path / "model")
    loaded = artifact.load(directory)
    np.testing.assert_array_equal(item_vectors(loaded)[1], item_vectors(trained)[1])
    users = trained.user_ids[:10]
    np.testing.assert_array_equal(user_vectors(loaded, users), user_vectors(trained, users))
    assert loaded.spec == trained.spec and loaded.config == trained.config


def test_cold_items_are_embedded_from_their_features(data):
    interactions, items = data
    cold = items["item_id"].to_numpy()[::10]  # every tenth item never appears in training
    warm_log = interactions[~interactions["item_id"].isin(cold)]
    trained = train(warm_log, items, None, id_tower(epochs=6, batch_size=256, seed=1), progress=False)
    ids, vectors = item_vectors(trained)
    embeddings = torch.nn.functional.normalize(torch.from_numpy(vectors[:, :-1]), dim=1).numpy()
    genres = items.set_index("item_id")["genres"].reindex(ids).str.split("|").map(set).to_numpy()
    is_cold = np.isin(ids, cold)
    same, other = [], []
    for row in np.flatnonzero(is_cold):
        similarity = embeddings[~is_cold] @ embeddings[row]
        shares_a_genre = np.array([bool(g & genres[row]) for g in genres[~is_cold]])
        same.append(similarity[shares_a_genre].mean())
        other.append(similarity[~shares_a_genre].mean())
    # a cold item sits nearer the warm items that share a genre with it than the rest
    assert np.mean(same) > np.mean(other) + 0.2


def test_unknown_users_and_items_do_not_crash(data):
    interactions, items = data
    trained = train(interactions, items, None, CONFIG, progress=False)
    vectors = user_vectors(trained, np.array([-5, trained.user_ids[0]]))
    assert np.isfinite(vectors).all() and vectors[0, -1] == 1.0
    assert trained.item_index(np.array([10**9]))[0] == 0


def test_users_table_features_are_used():
    interactions = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3], "timestamp": [1, 2, 3, 4]})
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["a", "b", "c"], "genres": ["X", "Y", "X|Y"]})
    users = pd.DataFrame({"user_id": [1, 2], "age": [20, 60], "gender": ["F", "M"]})
    trained = train(interactions, items, users, id_tower(epochs=1, batch_size=4), progress=False)
    assert [f.column for f in trained.spec.user] == ["user_id", "age", "gender"]
    np.testing.assert_array_equal(trained.user_inputs["gender"].numpy(), [0, 1, 2])


def test_checkpoint_resume_continues_exactly(data, tmp_path):
    interactions, items = data
    straight = train(interactions, items, None, id_tower(epochs=4, batch_size=256, seed=2), progress=False)
    train(interactions, items, None, id_tower(epochs=2, batch_size=256, seed=2), progress=False,
          checkpoint_dir=tmp_path)  # "interrupted" after two epochs
    resumed = train(interactions, items, None, id_tower(epochs=4, batch_size=256, seed=2), progress=False,
                    checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(item_vectors(resumed)[1], item_vectors(straight)[1], rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_other_settings_is_not_resumed(data, tmp_path):
    interactions, items = data
    train(interactions, items, None, id_tower(epochs=1, batch_size=256, seed=2), progress=False,
          checkpoint_dir=tmp_path)
    fresh = train(interactions, items, None, id_tower(epochs=1, batch_size=128, seed=2), progress=False,
                  checkpoint_dir=tmp_path)
    assert len(fresh.history) == 1 and fresh.config.batch_size == 128


def test_an_unreadable_checkpoint_is_ignored_not_unpickled(data, tmp_path, caplog):
    interactions, items = data
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x04\x95 truncated or hostile")
    trained = train(interactions, items, None, id_tower(epochs=1, batch_size=256, seed=2), progress=False,
                    checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in trained.history] == [1]  # trained from the start
    assert "ignoring unreadable checkpoint" in caplog.text


def test_early_stopping_keeps_the_best_epoch(data):
    from towerbridge.towers.id_tower import validation_hit_rate, validation_split
    from towerbridge.towers.train import pick_device

    interactions, items = data
    config = id_tower(epochs=30, batch_size=256, learning_rate=0.05, seed=4, early_stopping_patience=2,
                         validation_users=300, validation_k=10)
    trained = train(interactions, items, None, config, progress=False)
    metrics = [e["validation_hit_rate@10"] for e in trained.history]
    best_epoch = int(np.argmax(metrics)) + 1
    assert len(metrics) == best_epoch + 2 < 30  # stopped two epochs after the best one
    _, validation = validation_split(interactions, config)
    assert len(validation) == 300
    assert validation_hit_rate(trained, validation, pick_device("cpu")) == pytest.approx(max(metrics), abs=1e-5)
    assert trained.stop == {"reason": "patience", "epochs": best_epoch + 2, "kept_epoch": best_epoch,
                            "best_metric": round(max(metrics), 5), "patience": 2}


def test_training_says_why_it_stopped_and_keeps_its_time_budget(data, tmp_path):
    from towerbridge.towers.checkpoint import describe_stop

    interactions, items = data
    whole = train(interactions, items, None, id_tower(epochs=2, batch_size=256, seed=1), progress=False)
    assert whole.stop == {"reason": "epochs", "epochs": 2, "kept_epoch": 2}
    assert describe_stop(whole.stop) == "ran all 2 epochs; kept epoch 2"
    # a budget spent by the first step: the epoch is cut after its first batch, whatever the
    # machine's speed (a budget measured in epochs' time was flaky under a loaded CI)
    budget = 1e-6
    timed = train(interactions, items, None, id_tower(epochs=50, batch_size=256, seed=1, time_budget=budget),
                  progress=False, checkpoint_dir=tmp_path)
    done, batches = map(int, timed.stop["last_epoch_batches"].split("/"))
    assert timed.stop["reason"] == "time" and timed.stop["epochs"] == 1 and done == 1 < batches
    assert timed.history[0]["batches"] == f"1/{batches}"
    assert describe_stop(timed.stop) == (f"stopped in epoch 1 (after 1/{batches} batches): the time budget of "
                                         f"{budget:g} s was spent; kept epoch 1")
    artifact.save(timed, tmp_path / "model")
    assert artifact.read_manifest(tmp_path / "model").stop == timed.stop
    # a retry of the same training (the flow's) resumes the stopped one: it trains no further
    again = train(interactions, items, None, id_tower(epochs=50, batch_size=256, seed=1, time_budget=budget),
                  progress=False, checkpoint_dir=tmp_path)
    assert again.history == timed.history and again.stop == timed.stop
    np.testing.assert_array_equal(item_vectors(again)[1], item_vectors(timed)[1])
    # resumed without a budget, it trains on (its stop record says why it ended this time)
    longer = train(interactions, items, None, id_tower(epochs=2, batch_size=256, seed=1), progress=False,
                   checkpoint_dir=tmp_path)
    assert longer.stop == {"reason": "epochs", "epochs": 2, "kept_epoch": 2} and len(longer.history) == 2
    # a try that resumes a training counts the time its earlier tries took against the budget:
    # a budget of the first epoch's own time is spent before the second epoch's first batch ends
    # (a fresh budget would let that epoch run about as long as the first)
    resumed = tmp_path / "resumed"
    first = train(interactions, items, None, id_tower(epochs=1, batch_size=256, seed=1), progress=False,
                  checkpoint_dir=resumed)
    more = train(interactions, items, None, id_tower(epochs=50, batch_size=256, seed=1,
                                                     time_budget=first.history[0]["seconds"]),
                 progress=False, checkpoint_dir=resumed)
    assert more.stop["reason"] == "time" and more.stop["epochs"] == 2
    assert more.stop["last_epoch_batches"] == f"1/{batches}"
    assert describe_stop({"reason": "time", "epochs": 3, "kept_epoch": 3}) == (
        "stopped after epoch 3: the time budget was spent; kept epoch 3")
    with pytest.raises(ConfigError, match="time_budget must be a positive number of seconds"):
        id_tower(time_budget=0)


def test_a_time_budget_keeps_the_best_validated_weights(data):
    from towerbridge.towers.id_tower import validation_hit_rate, validation_split
    from towerbridge.towers.train import pick_device

    interactions, items = data
    probe = train(interactions, items, None, id_tower(epochs=1, batch_size=256, seed=4), progress=False)
    budget = 3.5 * probe.history[0]["seconds"]
    config = id_tower(epochs=50, batch_size=256, learning_rate=0.05, seed=4, early_stopping_patience=50,
                      validation_users=300, validation_k=10, time_budget=budget)
    trained = train(interactions, items, None, config, progress=False)
    metrics = [epoch["validation_hit_rate@10"] for epoch in trained.history]
    assert trained.stop["reason"] == "time" and 2 <= len(metrics) < 50
    # every epoch, the cut one included, was validated; the weights kept are the best of them
    assert trained.stop["kept_epoch"] == int(np.argmax(metrics)) + 1
    assert trained.stop["best_metric"] == round(max(metrics), 5)
    _, validation = validation_split(interactions, config)
    assert validation_hit_rate(trained, validation, pick_device("cpu")) == pytest.approx(max(metrics), abs=1e-5)


def test_sparse_embedding_tables_learn_and_resume_exactly(data, tmp_path):
    # "always" forces what "auto" does for tables over SPARSE_ROWS rows: SparseAdam on them.
    interactions, items = data
    sparse = dict(batch_size=256, seed=2, sparse_embeddings="always")
    trained = train(interactions, items, None, id_tower(epochs=4, **sparse), progress=False)
    assert trained.model.user_tower.inputs["user_id"].sparse
    assert trained.history[-1]["loss_per_example"] < trained.history[0]["loss_per_example"]
    train(interactions, items, None, id_tower(epochs=2, **sparse), progress=False, checkpoint_dir=tmp_path)
    resumed = train(interactions, items, None, id_tower(epochs=4, **sparse), progress=False,
                    checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(item_vectors(resumed)[1], item_vectors(trained)[1], rtol=1e-5, atol=1e-6)


def test_only_large_tables_are_sparse_by_default():
    from towerbridge.towers.config import SPARSE_ROWS

    config = TowerConfig()
    assert not config.sparse(SPARSE_ROWS) and config.sparse(SPARSE_ROWS + 1)
    assert TowerConfig(sparse_embeddings="always").sparse(10)
    assert not TowerConfig(sparse_embeddings="never").sparse(10**7)
    with pytest.raises(ConfigError, match="sparse_embeddings"):
        TowerConfig(sparse_embeddings="yes")


def test_each_user_tower_has_its_own_defaults_and_settings_override_them():
    from towerbridge.towers.config import DEFAULT_USER_TOWER
    from towerbridge.towers.registry import QUERY_TOWERS

    assert TowerConfig().user_tower == DEFAULT_USER_TOWER == "sequence"
    for tower, kind in QUERY_TOWERS.items():
        chosen = kind.defaults
        for config in (TowerConfig(user_tower=tower), TowerConfig.for_tower(tower),
                       TowerConfig.from_dict({"user_tower": tower})):
            assert {name: getattr(config, name) for name in chosen} == chosen
    assert TowerConfig(user_tower="id").vector_dim == 32 and TowerConfig().vector_dim == 65
    assert id_tower(epochs=3).epochs == 3
    assert TowerConfig.from_dict(TowerConfig(user_tower="id").to_dict()) == TowerConfig(user_tower="id")


def test_the_default_tower_follows_the_protocol_unless_chosen():
    from towerbridge.defaults import user_tower_for

    assert user_tower_for("leave-last-out") == user_tower_for("time-cutoff") == "sequence"
    assert user_tower_for("tfrs") == "id"  # a random split: the held-out items are not the next ones
    assert user_tower_for("tfrs", "pooled") == "pooled" and user_tower_for("leave-last-out", "id") == "id"


def test_a_cosine_schedule_falls_from_the_rate_to_zero_over_the_epochs(data):
    from towerbridge.towers.train import learning_rate

    config = id_tower(learning_rate=0.01, learning_rate_schedule="cosine", epochs=2, batch_size=256, seed=1)
    assert [round(learning_rate(config, t), 6) for t in (0.0, 0.25, 0.5, 1.0)] == [0.01, 0.008536, 0.005, 0.0]
    assert learning_rate(id_tower(learning_rate=0.01), 0.9) == 0.01  # constant
    interactions, items = data
    constant = train(interactions, items, None, id_tower(epochs=2, batch_size=256, seed=1), progress=False)
    cosine = train(interactions, items, None, config, progress=False)
    # the same first steps at the full rate, then smaller ones
    assert cosine.history[0]["loss_per_example"] == pytest.approx(constant.history[0]["loss_per_example"], rel=0.02)
    assert cosine.history[1]["loss_per_example"] != constant.history[1]["loss_per_example"]
    with pytest.raises(ConfigError, match="learning_rate_schedule must be 'constant' or 'cosine'"):
        id_tower(learning_rate_schedule="step")
