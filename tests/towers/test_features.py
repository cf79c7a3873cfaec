"""Feature encoders against hand-worked values."""

import numpy as np
import pandas as pd
import pytest

from towerbridge.errors import ConfigError
from towerbridge.towers.features import MAX_TOKENS, Encoder, Feature, default_spec


def test_categorical_maps_unseen_and_missing_to_zero():
    encoder = Encoder(Feature("gender", "categorical")).fit(pd.Series(["M", "F", "M"]))
    assert encoder.state == {"vocabulary": ["F", "M"]}
    assert encoder.cardinality == 3
    np.testing.assert_array_equal(encoder.transform(pd.Series(["M", "X", None, "F"])), [2, 0, 0, 1])


def test_multi_hot_and_text_bags():
    genres = Encoder(Feature("genres", "multi_hot")).fit(pd.Series(["Drama|Comedy", "Drama", ""]))
    assert genres.state == {"vocabulary": ["Comedy", "Drama"]}
    bags = genres.transform(pd.Series(["Comedy|Drama", "Horror", None]))
    assert bags.shape == (3, MAX_TOKENS)
    np.testing.assert_array_equal(bags[:, :3], [[1, 2, 0], [0, 0, 0], [0, 0, 0]])
    # text keeps words seen at least twice in the fitted column
    titles = Encoder(Feature("title", "text")).fit(pd.Series(["The Lost River (1990)", "The river", "Lost"]))
    assert titles.state == {"vocabulary": ["lost", "river", "the"]}
    np.testing.assert_array_equal(titles.transform(pd.Series(["river of THE lost"]))[0, :4], [2, 3, 1, 0])


def test_bucketized_and_time_cut_at_training_quantiles():
    ages = Encoder(Feature("age", "bucketized", buckets=4)).fit(pd.Series([10, 20, 30, 40, 50]))
    assert ages.state == {"boundaries": [20.0, 30.0, 40.0]}
    # below the first boundary -> 1, at a boundary -> the bucket above, missing -> 0
    np.testing.assert_array_equal(ages.transform(pd.Series([5, 20, 35, 99, None])), [1, 2, 3, 4, 0])
    assert ages.cardinality == 5


def test_numeric_is_standardised():
    encoder = Encoder(Feature("price", "numeric")).fit(pd.Series([1.0, 3.0]))
    assert encoder.state == {"mean": 2.0, "std": pytest.approx(np.sqrt(2.0))}
    np.testing.assert_allclose(encoder.transform(pd.Series([2.0, 3.0, None]))[:, 0], [0.0, 1 / np.sqrt(2), 0.0])


def test_encoders_round_trip_through_json():
    fitted = Encoder(Feature("age", "bucketized", buckets=3)).fit(pd.Series([1, 2, 3, 4, 5, 6]))
    again = Encoder.from_dict(fitted.to_dict())
    values = pd.Series([0, 3, 6])
    np.testing.assert_array_equal(again.transform(values), fitted.transform(values))


def test_default_spec_uses_recognised_columns():
    spec = default_spec(["user_id", "age", "zip_code"], ["item_id", "title", "genres", "budget"])
    assert [(f.column, f.kind) for f in spec.user] == [("user_id", "id"), ("age", "bucketized")]
    assert [(f.column, f.kind) for f in spec.item] == [("item_id", "id"), ("genres", "multi_hot"), ("title", "text")]
    ids_only = default_spec(["user_id", "age"], ["item_id", "genres"], use_features=False)
    assert [f.kind for f in ids_only.user + ids_only.item] == ["id", "id"]


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="unknown kind 'image'"):
        Feature("poster", "image")
