"""A learned temperature (``learn_temperature``): a weight trained with the others, recorded in
the trained model's config, scaling the vectors stored in Milvus, kept by a saved model and
carried over by a continued one."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from towerbridge.data.split import leave_last_one_out
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import ConfigError
from towerbridge.towers import artifact
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.loss import full_softmax_loss
from towerbridge.towers.train import prepare, read_parent, train
from towerbridge.towers.vectors import item_vectors

LEARNED = TowerConfig(epochs=3, batch_size=64, seed=2, vector_dim=17, history_length=20, learning_rate=0.02,
                      learn_temperature=True, temperature=0.2)


@pytest.fixture(scope="module")
def log():
    interactions, items = generate(SyntheticSpec(n_users=400, n_items=150, n_topics=6, seed=7))
    return leave_last_one_out(interactions)[0], items


@pytest.fixture(scope="module")
def trained(log, tmp_path_factory):
    interactions, items = log
    model = train(interactions, items, None, LEARNED, progress=False)
    return model, artifact.save(model, tmp_path_factory.mktemp("learned") / "model")


def test_the_temperature_is_learned_and_the_model_records_it(trained):
    model, _ = trained
    learned = model.model.learned_temperature()
    assert learned is not None and abs(learned - 0.2) > 0.01  # it moved from where it started
    assert model.config.temperature == learned and model.config.learn_temperature
    # the stored item vectors are divided by the learned temperature, as the softmax was
    rows = {name: t[1:] for name, t in model.item_inputs.items()}
    with torch.no_grad():
        expected = model.model.item_tower(rows).numpy() / learned
    np.testing.assert_allclose(item_vectors(model)[1][:, :-1], expected, rtol=1e-5, atol=1e-6)


def test_a_fixed_temperature_has_no_weight_and_is_kept(log):
    interactions, items = log
    model = train(interactions, items, None, replace(LEARNED, learn_temperature=False, epochs=1), progress=False)
    assert model.model.learned_temperature() is None and model.config.temperature == 0.2
    assert not any("temperature" in name for name in model.model.state_dict())


def test_the_scaled_loss_is_the_loss_at_that_temperature(trained):
    model, _ = trained
    torch.manual_seed(0)
    queries, items = torch.nn.functional.normalize(torch.randn(9, 16), dim=-1), torch.randn(30, 16)
    positive = torch.randint(0, 30, (9,))
    scaled, one = model.model.scaled(queries, 0.5)
    assert one == 1.0
    torch.testing.assert_close(full_softmax_loss(scaled, items, positive, one),
                               full_softmax_loss(queries, items, positive, model.model.learned_temperature()))
    # and its gradient reaches the temperature's weight
    full_softmax_loss(scaled, items, positive, one).backward()
    assert model.model.log_inverse_temperature.grad is not None


def test_a_saved_model_keeps_the_learned_temperature(trained):
    model, directory = trained
    loaded = artifact.load(directory)
    assert loaded.config.temperature == model.config.temperature
    assert loaded.model.learned_temperature() == pytest.approx(model.model.learned_temperature(), rel=1e-6)
    np.testing.assert_array_equal(item_vectors(loaded)[1], item_vectors(model)[1])


def test_a_continued_model_starts_from_its_parents_learned_temperature(log, trained):
    interactions, items = log
    _, directory = trained
    parent = read_parent(str(directory))
    # today's options give the starting value again (0.2); the parent's learned one is what carries over
    child = prepare(interactions, items, None, LEARNED, parent=parent)
    assert child.model.learned_temperature() == pytest.approx(parent.model.model.learned_temperature(), rel=1e-6)
    assert math.isclose(child.config.temperature, 0.2)
    # a fixed temperature cannot continue a learned one (the parent's scale would be lost): refused
    with pytest.raises(ConfigError, match="learn_temperature"):
        prepare(interactions, items, None, replace(LEARNED, learn_temperature=False), parent=parent)


def test_a_learned_temperature_continues_a_fixed_one_from_its_value(log, tmp_path):
    # a serving model from before the setting (a fixed 0.3) continued by today's defaults
    interactions, items = log
    fixed = train(interactions, items, None, replace(LEARNED, learn_temperature=False, temperature=0.3, epochs=1),
                  progress=False)
    parent = read_parent(str(artifact.save(fixed, tmp_path / "fixed")))
    child = prepare(interactions, items, None, LEARNED, parent=parent)  # LEARNED would start from 0.2
    assert child.model.learned_temperature() == pytest.approx(0.3, rel=1e-6)
    torch.testing.assert_close(child.model.item_tower.inputs["item_id"].weight[1:],
                               fixed.model.item_tower.inputs["item_id"].weight[1:])  # and the rest carried over


def test_a_learned_temperature_stops_at_its_lower_bound(trained):
    from towerbridge.towers.model import MIN_LEARNED_TEMPERATURE

    model = trained[0].model
    saved = model.log_inverse_temperature.detach().clone()
    try:
        with torch.no_grad():
            model.log_inverse_temperature.fill_(10.0)  # 1 / e^10: far below the bound
        assert model.learned_temperature() == pytest.approx(MIN_LEARNED_TEMPERATURE)
        queries = torch.ones(2, 3)
        torch.testing.assert_close(model.scaled(queries, 0.1)[0], queries / MIN_LEARNED_TEMPERATURE)
    finally:
        with torch.no_grad():
            model.log_inverse_temperature.copy_(saved)
