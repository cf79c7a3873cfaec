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
