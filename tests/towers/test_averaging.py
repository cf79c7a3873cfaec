"""The weights' moving average (``ema_decay``): the model training returns holds the average of
the weights after each step, early stopping validates it, and a resumed training carries it."""

import pytest
import torch

from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import ConfigError
from towerbridge.towers import train as training
from towerbridge.towers.averaging import WeightAverage
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.manifest import OLDER_MODELS
from towerbridge.towers.parallel import sparse_tables
from towerbridge.towers.train import train

SETTINGS = {"user_tower": "sequence", "history_length": 16, "batch_size": 64, "dropout": 0.3, "seed": 3,
            "vector_dim": 17, "epochs": 2, "learning_rate": 0.01, "ema_decay": 0.0}  # the sequence tower's is 0.98


@pytest.fixture(scope="module")
def log():
    return generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=9))


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def decays(decay: float, updates: int) -> list[float]:
    """The average's decay at each update: at most (1 + n) / (10 + n) after n of them."""
    return [min(decay, (1 + n) / (10 + n)) for n in range(updates)]


def test_the_average_moves_a_share_of_the_way_after_each_update():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(layer, 0.75)
    expected = 1.0
    for value, decay in zip([5.0, 9.0] + [2.0] * 30, decays(0.75, 32)):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        expected += (1 - decay) * (value - expected)
        with average.swapped_in():
            torch.testing.assert_close(layer.weight, torch.full((1, 2), expected))
        assert torch.equal(layer.weight, torch.full((1, 2), value))  # the trained weights, back after the block
    assert decays(0.75, 32)[:2] == [0.1, 2 / 11] and decays(0.75, 32)[-1] == 0.75  # close early, then 0.75
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightAverage(layer, 1.0)


def test_the_trained_model_is_the_average_of_each_steps_weights(log, monkeypatch):
    interactions, items = log
    steps: list[list[torch.Tensor]] = []
    start: list[list[torch.Tensor]] = []

    class Recorded(training.TrainingStep):  # the weights after every step of a training without the average
        def __init__(self, model, *args):
            super().__init__(model, *args)
            self.model = model
            start.append(weights(model))

        def __call__(self, *args):
            loss = super().__call__(*args)
            steps.append(weights(self.model))
            return loss

    monkeypatch.setattr(training, "TrainingStep", Recorded)
    last = train(interactions, items, None, TowerConfig(**SETTINGS), progress=False)
    monkeypatch.undo()
    averaged = train(interactions, items, None, TowerConfig(**{**SETTINGS, "ema_decay": 0.9}), progress=False)

    expected = start[0]
    for step, decay in zip(steps, decays(0.9, len(steps))):
        expected = [e + (1 - decay) * (s - e) for e, s in zip(expected, step)]
    assert len(steps) == 8  # 200 users in batches of 64, two epochs
    for mine, theirs in zip(averaged.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-4, atol=1e-5)
    assert [torch.equal(p, s) for p, s in zip(last.model.parameters(), steps[-1])] == [True] * len(steps[-1])
    assert any(not torch.allclose(p, s) for p, s in zip(averaged.model.parameters(), steps[-1]))


def test_early_stopping_validates_and_keeps_the_average(log):
    interactions, items = log
    config = TowerConfig(**{**SETTINGS, "epochs": 3, "ema_decay": 0.5}, early_stopping_patience=5, validation_users=50)
    trained = train(interactions, items, None, config, progress=False)
    plain = train(interactions, items, None, TowerConfig(**{**SETTINGS, "epochs": 3}, early_stopping_patience=5,
                                                         validation_users=50), progress=False)
    averaged = [epoch["validation_hit_rate@50"] for epoch in trained.history]
    last = [epoch["validation_hit_rate@50"] for epoch in plain.history]
    assert averaged != last  # the average is validated, not the last step's weights
    assert trained.stop["kept_epoch"] == 1 + averaged.index(max(averaged))
    # and training goes on from its own weights after each validation, not from the average
    assert [e["loss_per_example"] for e in trained.history] == [e["loss_per_example"] for e in plain.history]


def test_early_stopping_returns_the_best_epochs_average(log, tmp_path):
    interactions, items = log
    # a learning rate this high on this log peaks before the last epoch (with the softmax over every
    # item: the trajectory the test was set on)
    config = TowerConfig(**{**SETTINGS, "epochs": 4, "ema_decay": 0.5, "learning_rate": 0.05,
                            "exclude_history": "off"}, early_stopping_patience=5, validation_users=50)
    trained = train(interactions, items, None, config, progress=False, checkpoint_dir=tmp_path)
    best = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["best"]
    assert best["epoch"] == trained.stop["kept_epoch"] < 4  # an earlier epoch than the last was the best
    for name, weights in trained.model.state_dict().items():
        assert torch.equal(weights, best["weights"][name]), name


def test_tables_with_sparse_gradients_keep_their_last_steps_rows():
    model = torch.nn.Module()
    model.table, model.layer = torch.nn.Embedding(5, 2, sparse=True), torch.nn.Linear(2, 2)
    average = WeightAverage(model, 0.9, leave_out=list(sparse_tables(model).values()))
    assert average.parameters == [model.layer.weight, model.layer.bias]


def test_a_resumed_training_carries_the_average(log, tmp_path):
    interactions, items = log
    config = {**SETTINGS, "ema_decay": 0.8}
    straight = train(interactions, items, None, TowerConfig(**{**config, "epochs": 3}), progress=False)
    train(interactions, items, None, TowerConfig(**{**config, "epochs": 2}), progress=False, checkpoint_dir=tmp_path)
    resumed = train(interactions, items, None, TowerConfig(**{**config, "epochs": 3}), progress=False,
                    checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    width = straight.config.tower_dim
    for name, theirs in straight.model.state_dict().items():
        mine = resumed.model.state_dict()[name]
        if name.endswith("qkv.bias"):  # the keys' bias has no gradient: see test_history's resume test
            keep = torch.ones(len(theirs), dtype=torch.bool)
            keep[width:2 * width] = False
            theirs, mine = theirs[keep], mine[keep]
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_the_setting_is_checked_and_older_models_read_as_without_it():
    with pytest.raises(ConfigError, match=r"ema_decay must be in \[0, 1\)"):
        TowerConfig(ema_decay=1.0)
    with pytest.raises(ConfigError, match="ema_decay must be a number"):
        TowerConfig(ema_decay="0.9")
    assert TowerConfig(user_tower="id").ema_decay == 0.0 and TowerConfig(user_tower="sequence").ema_decay == 0.98
    assert OLDER_MODELS["ema_decay"] == 0.0
