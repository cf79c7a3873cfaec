"""The query towers' registry: each name leads to its class, and the settings are checked by name."""

from __future__ import annotations

import pytest

from towerbridge.errors import ConfigError
from towerbridge.towers.config import USER_TOWERS, TowerConfig
from towerbridge.towers.query import QueryTower
from towerbridge.towers.registry import QUERY_TOWERS, query_tower, tower_kind


def test_every_entry_leads_to_its_tower_class():
    assert USER_TOWERS == ("sequence", "pooled", "id")
    for name in QUERY_TOWERS:
        cls = query_tower(name)
        assert issubclass(cls, QueryTower) and cls.name == name
    assert [query_tower(name).reads_history for name in USER_TOWERS] == [True, True, False]


def test_a_model_holds_the_class_its_config_names():
    from towerbridge.towers.model import TwoTowerModel

    for name in USER_TOWERS:
        model = TwoTowerModel([], [], 5, 7, TowerConfig.for_tower(name, feature_dim=4, history_length=8))
        assert type(model.user_tower) is query_tower(name)


def test_an_unknown_tower_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="user_tower must be one of sequence, pooled, id, got 'graph'"):
        tower_kind("graph")
    with pytest.raises(ConfigError, match="user_tower must be one of sequence, pooled, id, got 'graph'"):
        TowerConfig(user_tower="graph")


def test_a_tower_checks_what_it_needs_of_the_settings():
    with pytest.raises(ConfigError, match="attention_heads 3 must divide the tower width vector_dim - 1 = 64"):
        TowerConfig(attention_heads=3)
    assert TowerConfig(user_tower="pooled", attention_heads=3).attention_heads == 3  # pooled has no attention
    with pytest.raises(ConfigError, match="feed_forward_mult must be >= 1, got 0"):
        TowerConfig(feed_forward_mult=0)


def test_the_interactions_training_reads_per_user():
    config = TowerConfig(history_length=50)
    assert query_tower("sequence").interactions_read(config) == 51
    assert query_tower("id").interactions_read(TowerConfig(user_tower="id")) is None


def test_the_id_tower_cannot_read_a_history():
    from towerbridge.towers.model import TwoTowerModel

    model = TwoTowerModel([], [], 5, 7, TowerConfig.for_tower("id", feature_dim=4))
    with pytest.raises(ConfigError, match="this model has the id tower, which cannot read a history"):
        model.user_tower.history_query(None, [1, 2])
