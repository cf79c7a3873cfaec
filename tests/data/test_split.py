import pandas as pd

from towerbridge.data.split import leave_last_one_out


def test_last_interaction_by_time_is_held_out():
    interactions = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 3, 3],
        "item_id": [10, 11, 12, 10, 13, 14],
        "timestamp": [30, 10, 20, 5, 7, 7],  # user 3 ties: the later row wins
    })
    train, held_out = leave_last_one_out(interactions)
    assert held_out[["user_id", "item_id"]].values.tolist() == [[1, 10], [3, 14]]
    # user 2 has one interaction: training only
    assert sorted(train[["user_id", "item_id"]].values.tolist()) == [[1, 11], [1, 12], [2, 10], [3, 13]]


def test_tfrs_split_is_a_seeded_80_20_shuffle():
    from towerbridge.data.split import split

    interactions = pd.DataFrame({"user_id": range(100), "item_id": range(100), "timestamp": range(100)})
    train, held_out = split(interactions, "tfrs")
    again, _ = split(interactions, "tfrs")
    assert (len(train), len(held_out)) == (80, 20)
    assert train.equals(again)
    assert set(train["item_id"]) | set(held_out["item_id"]) == set(range(100))
    assert not set(train["item_id"]) & set(held_out["item_id"])
    assert held_out["item_id"].tolist() != list(range(80, 100))  # shuffled, not the tail


def test_unknown_protocol():
    import pytest

    from towerbridge.data.split import split
    from towerbridge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown protocol 'random'; known: leave-last-out, tfrs"):
        split(pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]}), "random")


def test_leave_last_n_out():
    from towerbridge.data.split import leave_last_one_out

    interactions = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2], "item_id": [1, 2, 3, 4, 5, 6],
                                 "timestamp": [1, 2, 3, 4, 1, 2]})
    train, held_out = leave_last_one_out(interactions, holdout=2)
    assert held_out["item_id"].tolist() == [3, 4]  # user 2 has only 2: training only
    assert sorted(train["item_id"]) == [1, 2, 5, 6]


def test_time_cutoff_and_what_cannot_be_scored():
    import pytest

    from towerbridge.data.split import SplitOptions, scorable, split
    from towerbridge.errors import DataError

    interactions = pd.DataFrame({"user_id": [1, 1, 1, 2, 3], "item_id": [1, 2, 1, 3, 4],
                                 "timestamp": [10, 20, 30, 40, 5]})
    train, held_out = split(interactions, "time-cutoff", SplitOptions(cutoff=25))
    assert (train["timestamp"] < 25).all() and held_out["timestamp"].tolist() == [30, 40]
    kept, reasons = scorable(train, held_out, "time-cutoff")
    # user 1 re-watches item 1 (seen, excluded from ranking); user 2 never trained
    assert kept.empty
    assert reasons == {"user has no training interactions": 1,
                       "item already seen in training (excluded from ranking)": 1}
    with pytest.raises(DataError, match="cutoff 100 leaves no held-out interactions; timestamps run from 5 to 40"):
        split(interactions, "time-cutoff", SplitOptions(cutoff=100))
