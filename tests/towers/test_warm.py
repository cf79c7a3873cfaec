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
