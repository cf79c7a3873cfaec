"""Continual training (towers/warm.py): a model continues its parent on a grown log, new items
and users included; a parent of another shape is refused with the reason."""

import numpy as np
import pytest
import torch

from towerbridge.data.split import leave_last_one_out
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import ConfigError
from towerbridge.towers import artifact
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.train import Parent, prepare, read_parent, train
from towerbridge.towers.trained import lookup
from towerbridge.towers.vectors import item_vectors
from towerbridge.towers.warm import keyed_tables

SEQUENCE = TowerConfig(epochs=2, batch_size=128, seed=1, vector_dim=33, history_length=20)
ID = TowerConfig(user_tower="id", epochs=2, batch_size=256, seed=1)


@pytest.fixture(scope="module")
def logs():
    """Yesterday's catalog and log (some items and users not in them yet) and today's."""
    interactions, items = generate(SyntheticSpec(n_users=600, n_items=300, n_topics=12, seed=5))
    today = leave_last_one_out(interactions)[0]
    new_items = items["item_id"].to_numpy()[-20:]
    yesterday = today[~today["item_id"].isin(new_items) & ~today["user_id"].isin(np.unique(today["user_id"])[-30:])]
    new_users = np.setdiff1d(today["user_id"].unique(), yesterday["user_id"].unique())
    return yesterday, today, items, new_items, new_users


@pytest.fixture(scope="module", params=[SEQUENCE, ID], ids=["sequence", "id"])
def parent(request, logs, tmp_path_factory):
    yesterday, _, items, new_items, _ = logs
    trained = train(yesterday, items[~items["item_id"].isin(new_items)], None, request.param, progress=False)
    directory = artifact.save(trained, tmp_path_factory.mktemp("parent") / "model")
    return read_parent(str(directory))


def test_the_weights_are_the_parents_for_what_it_knew(logs, parent):
    _, today, items, new_items, new_users = logs
    child = prepare(today, items, None, parent.model.config, parent=parent)
    theirs, ours = parent.model.model.state_dict(), child.model.state_dict()
    tables = keyed_tables(child)
    assert "item_tower.inputs.item_id.weight" in tables
    for name, tensor in ours.items():
        if name not in tables:
            assert torch.equal(tensor, theirs[name]), name
    items_table = ours["item_tower.inputs.item_id.weight"]
    known = ~np.isin(child.item_ids, new_items)
    parent_rows = parent.model.item_index(child.item_ids[known])
    parent_table = theirs["item_tower.inputs.item_id.weight"]
    assert torch.equal(items_table[1:][torch.from_numpy(known)], parent_table[parent_rows])
    # a new item's row is fresh (it trains from there); its vector starts from its features
    assert not torch.equal(items_table[1:][torch.from_numpy(~known)], torch.zeros_like(items_table[1:][~known]))
    # the vocabulary features' tables (genres, title words) row by row by their values
    theirs_keys = keyed_tables(parent.model)
    vocabularies = [name for name in tables if not name.endswith("_id.weight")]
    assert vocabularies
    for name in vocabularies:
        rows = lookup(theirs_keys[name], tables[name])
        assert torch.equal(ours[name][1:][torch.from_numpy(rows > 0)], theirs[name][rows[rows > 0]]), name
    if parent.model.config.user_tower == "id":
        users_table = ours["user_tower.inputs.user_id.weight"]
        old = ~np.isin(child.user_ids, new_users)
        assert torch.equal(users_table[1:][torch.from_numpy(old)],
                           theirs["user_tower.inputs.user_id.weight"][parent.model.user_index(child.user_ids[old])])
    lineage = child.lineage
    assert (lineage.new_items, lineage.new_users) == (len(new_items), len(new_users))
    assert (lineage.items, lineage.users, lineage.parent_id) == (len(items), today["user_id"].nunique(),
                                                                 parent.model_id)


def test_a_continued_model_trains_from_there_and_records_its_parent(logs, parent, tmp_path):
    _, today, items, new_items, _ = logs
    config = TowerConfig.from_dict({**parent.model.config.to_dict(), "epochs": 1})
    fresh = train(today, items, None, config, progress=False)
    continued = train(today, items, None, config, progress=False, parent=parent)
    # a head start: after one epoch the continued model's loss is below a fresh one's
    assert continued.history[0]["loss_per_example"] < fresh.history[0]["loss_per_example"]
    directory = artifact.save(continued, tmp_path / "model")
    manifest = artifact.read_manifest(directory)
    assert manifest.lineage == continued.lineage and manifest.lineage.parent_dir == parent.source
    assert artifact.load(directory).lineage.new_items == len(new_items)
    ids, vectors = item_vectors(artifact.load(directory))
    assert set(new_items) <= set(ids) and np.isfinite(vectors).all()  # new items get vectors


def test_a_parent_of_another_shape_is_refused(logs, parent):
    _, today, items, _, _ = logs
    wider = TowerConfig.from_dict({**parent.model.config.to_dict(), "vector_dim": 17})
    with pytest.raises(ConfigError, match=r"cannot continue training from .*: its towers have another shape "
                                          r"\(vector_dim \d+ -> 17.*train from scratch instead"):
        prepare(today, items, None, wider, parent=parent)
    # a training setting is not the model's shape
    prepare(today, items, None, TowerConfig.from_dict({**parent.model.config.to_dict(), "learning_rate": 0.01}),
            parent=parent)


def test_other_features_are_refused(logs, parent):
    _, today, items, _, _ = logs
    config = TowerConfig.from_dict({**parent.model.config.to_dict(), "use_features": False})
    with pytest.raises(ConfigError, match="cannot continue training from"):
        prepare(today, items, None, config, parent=Parent(parent.model, parent.model_id, parent.source))


def test_a_genre_new_today_gets_a_row_and_the_old_genres_keep_theirs(logs, parent):
    _, today, items, new_items, _ = logs
    items = items.copy()
    items.loc[items["item_id"].isin(new_items), "genres"] += "|Novelty"
    child = prepare(today, items, None, parent.model.config, parent=parent)
    [before] = [e.state["vocabulary"] for e in parent.model.item_encoders if e.feature.column == "genres"]
    [after] = [e.state["vocabulary"] for e in child.item_encoders if e.feature.column == "genres"]
    assert "Novelty" not in before and after == sorted([*before, "Novelty"])
    table = "item_tower.inputs.genres.weight"
    ours, theirs = child.model.state_dict()[table], parent.model.model.state_dict()[table]
    novelty = after.index("Novelty") + 1
    assert torch.equal(ours[[i + 1 for i, genre in enumerate(after) if genre != "Novelty"]], theirs[1:])
    assert not torch.equal(ours[novelty], torch.zeros_like(ours[novelty]))  # fresh, not padding
    # and the item's input names it
    row = child.item_index(np.array([new_items[0]]))[0]
    assert novelty in child.item_inputs["genres"][row].tolist()


def test_a_replay_keeps_what_changed_and_a_seeded_fraction_of_the_rest(logs):
    from towerbridge.towers.warm import replay

    yesterday, today, *_ = logs
    # the history towers: every interaction of the users whose training history grew (new users too)
    chosen, record = replay(today, yesterday, 0.2, seed=3, by_user=True)
    before, now = yesterday["user_id"].value_counts(), today["user_id"].value_counts()
    grew = set(now.index[now.to_numpy() > before.reindex(now.index, fill_value=0).to_numpy()])
    users = set(chosen["user_id"])
    assert grew <= users and record.changed == len(grew) > 0
    assert record.replayed == len(users) - len(grew) and record.unchanged == len(now) - len(grew)
    assert 0.1 * record.unchanged < record.replayed < 0.3 * record.unchanged
    assert len(chosen) == today["user_id"].isin(users).sum()  # whole histories
    # the same draw whatever the order or sharding of the rows; another seed, another draw
    shuffled, _ = replay(today.sample(frac=1.0, random_state=0), yesterday, 0.2, seed=3, by_user=True)
    assert set(shuffled["user_id"]) == users
    assert set(replay(today, yesterday, 0.2, seed=4, by_user=True)[0]["user_id"]) != users
    assert set(replay(today, yesterday, 0.0, seed=3, by_user=True)[0]["user_id"]) == grew
    assert len(replay(today, yesterday, 1.0, seed=3, by_user=True)[0]) == len(today)
    # the id tower: the interactions the parent did not train on, and a fraction of those it did
    chosen, record = replay(today, yesterday, 0.1, seed=3, by_user=False)
    keys = ["user_id", "item_id", "timestamp"]
    new = today.merge(yesterday[keys], how="left", on=keys, indicator=True)["_merge"].eq("left_only").to_numpy()
    assert record.changed == new.sum() == len(today) - len(yesterday) > 0
    assert chosen.index.isin(today.index[new]).sum() == new.sum()
    assert 0.05 * record.unchanged < record.replayed < 0.15 * record.unchanged
    assert record.describe() == (f"{new.sum():,} new interactions and {record.replayed:,} of the "
                                 f"{record.unchanged:,} others (a 10% replay)")


def test_a_continued_training_with_replay_records_it_and_without_the_parents_data_uses_the_whole_log(
        logs, tmp_path, caplog):
    yesterday, today, items, *_ = logs
    prepared = tmp_path / "parent-data"
    prepared.mkdir()
    yesterday.to_parquet(prepared / "train.parquet")
    parent_model = train(yesterday, items, None, SEQUENCE, progress=False)
    parent = Parent(parent_model, "parent", "the parent", len(yesterday), str(prepared))
    child = train(today, items, None, TowerConfig(**{**SEQUENCE.to_dict(), "replay": 0.1, "hidden_dims": ()}),
                  progress=False, parent=parent)
    assert child.lineage.replay["unit"] == "users" and child.lineage.replay["fraction"] == 0.1
    gone = Parent(parent_model, "parent", "the parent", len(yesterday), str(tmp_path / "nowhere"))
    whole = train(today, items, None, TowerConfig(**{**SEQUENCE.to_dict(), "replay": 0.1, "hidden_dims": ()}),
                  progress=False, parent=gone)
    assert whole.lineage.replay is None and "training data of the parent" in caplog.text
