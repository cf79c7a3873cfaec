"""The query towers' registry: each name leads to its class, and the settings are checked by name."""

from __future__ import annotations

import re

import numpy as np
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


def test_a_setting_given_as_text_is_read_as_its_type_and_a_wrong_type_is_refused():
    from towerbridge.towers.config import parse_setting

    assert parse_setting("gated_blocks=false") == ("gated_blocks", False)
    assert parse_setting("gated_blocks=Yes") == ("gated_blocks", True)
    assert parse_setting("attention_blocks=3") == ("attention_blocks", 3)
    assert parse_setting("dropout=0.25") == ("dropout", 0.25)
    assert parse_setting("learning_rate_schedule=cosine") == ("learning_rate_schedule", "cosine")
    assert parse_setting("hidden_dims=64,32") == ("hidden_dims", (64, 32))
    assert parse_setting("vector_dim=none") == ("vector_dim", None)  # the tower's default
    for text, message in (("attention_blocks=2.5", "attention_blocks takes a whole number, got '2.5'"),
                          ("gated_blocks=maybe", "gated_blocks takes true or false, got 'maybe'"),
                          ("dropout=none", "dropout takes a number, got 'none'"),
                          ("epochs", "expected NAME=VALUE, such as attention_blocks=3, got 'epochs'"),
                          ("attention_block=2", "'attention_block' is not a model setting; known: ")):
        with pytest.raises(ConfigError) as refused:
            parse_setting(text)
        assert str(refused.value).startswith(message), str(refused.value)
    # built in code, a value of the wrong type is refused the same way, once, by the config
    for settings, message in (({"gated_blocks": "false"}, "model setting gated_blocks must be true or false, "
                                                          "got 'false'"),
                              ({"attention_blocks": 2.0}, "model setting attention_blocks must be a whole number, "
                                                          "got 2.0"),
                              ({"vector_dim": True}, "model setting vector_dim must be a whole number or none "
                                                     "(the default), got True"),
                              ({"hidden_dims": (64, "32")}, "model setting hidden_dims must be comma-separated "
                                                            "whole numbers, got (64, '32')")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            TowerConfig(**settings)
    assert TowerConfig(temperature=1, attention_blocks=np.int64(3)).attention_blocks == 3  # numbers of any kind
