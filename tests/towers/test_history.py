"""The history towers: histories as windows, causality, padding, training on every position."""

import numpy as np
import pandas as pd
import pytest
import torch

from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.history import Histories
from towerbridge.towers.history_tower import history_exclusions, history_queries
from towerbridge.towers.sequence import AttentionBlock
from towerbridge.towers.train import prepare, train
from towerbridge.towers.vectors import user_layout, user_vectors


def test_windows_are_right_aligned_and_left_padded():
    histories = Histories.of([[5, 6, 7, 8], [9], []], users=np.array([10, 20, 30]))
    assert histories.windows(np.array([0, 1, 2, -1]), 3).tolist() == [[6, 7, 8], [0, 0, 9], [0, 0, 0], [0, 0, 0]]
    assert histories.windows(np.array([0]), 3, drop_last=1).tolist() == [[5, 6, 7]]
    assert histories.rows(np.array([20, 25, 10])).tolist() == [1, -1, 0]


def test_training_pairs_predict_the_next_item_at_every_position():
    histories = Histories.of([[5, 6, 7, 8], [9]])
    inputs, targets = histories.training_pairs(5)
    assert inputs.tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 0]]
    assert targets.tolist() == [[0, 0, 6, 7, 8], [0, 0, 0, 0, 0]]
    inputs, targets = histories.training_pairs(2, drop_last=1)  # the last item kept for validation
    assert inputs.tolist() == [[5, 6], [0, 0]] and targets.tolist() == [[6, 7], [0, 0]]


def test_earlier_windows_make_every_item_but_the_first_a_target_once():
    histories = Histories.of([list(range(1, 13)), [5, 6], [7]], users=np.array([10, 20, 30]))
    rows, inputs, targets = histories.training_windows(4, earlier=True)
    assert rows.tolist() == [0, 1, 2, 0, 0]  # the last windows first, then the earlier ones
    assert inputs.tolist() == [[8, 9, 10, 11], [0, 0, 0, 5], [0, 0, 0, 0], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert targets.tolist() == [[9, 10, 11, 12], [0, 0, 0, 6], [0, 0, 0, 0], [5, 6, 7, 8], [0, 2, 3, 4]]
    for row, items in enumerate([list(range(1, 13)), [5, 6], [7]]):
        assert sorted(targets[rows == row][targets[rows == row] > 0].tolist()) == items[1:]
    # without earlier windows: training_pairs; the validation item stays out of every window
    last_rows, last_inputs, _ = histories.training_windows(4)
    assert last_rows.tolist() == [0, 1, 2] and last_inputs.tolist() == inputs[:3].tolist()
    rows, inputs, targets = histories.training_windows(4, drop_last=1, earlier=True)
    assert 12 not in inputs and 12 not in targets
    assert sorted(targets[rows == 0][targets[rows == 0] > 0].tolist()) == list(range(2, 12))
    assert len(histories.training_windows(12, earlier=True)[0]) == 3  # 12 items: one window holds them


def test_the_task_trains_each_earlier_window_as_its_users_example():
    from towerbridge.towers.parallel import SINGLE

    interactions, items = generate(SyntheticSpec(n_users=60, n_items=40, n_topics=3, seed=5))
    config = TowerConfig(user_tower="sequence", history_length=8, epochs=1, batch_size=16, earlier_windows=True)
    trained = prepare(interactions, items, None, config)
    task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
    histories = Histories.from_interactions(interactions, trained.item_index)
    lengths = histories.lengths()
    windows = np.where(lengths >= 2, 1 + np.maximum(0, (lengths - 2) // 8), 0)  # per user
    assert windows.max() > 1  # some histories are longer than a window: the test checks something
    assert task.examples == windows.sum()
    assert int((task.targets > 0).sum()) == int(np.maximum(lengths - 1, 0).sum())  # every item but the first
    examples_per_user = np.bincount(task.user_rows.numpy(), minlength=len(trained.user_ids) + 1)
    assert examples_per_user[trained.user_index(histories.users)].tolist() == windows.tolist()
    assert type(trained.model.user_tower).interactions_read(config) is None  # reads whole histories
    assert np.isfinite(task.loss(torch.arange(16), np.random.default_rng(0)).item())


def test_histories_follow_time_and_leave_out_unknown_items():
    interactions = pd.DataFrame({"user_id": [2, 1, 2, 1, 2], "item_id": [30, 10, 20, 99, 10],
                                 "timestamp": [5, 1, 1, 0, 9]})
    vocabulary = np.array([10, 20, 30])
    histories = Histories.from_interactions(
        interactions, lambda ids: np.where(np.isin(ids, vocabulary), np.searchsorted(vocabulary, ids) + 1, 0))
    assert histories.users.tolist() == [1, 2]
    assert histories.windows(np.array([0, 1]), 3).tolist() == [[0, 0, 1], [2, 3, 1]]


@pytest.fixture(scope="module", params=["sequence", "pooled", "sequence, gated blocks"])
def model(request):
    interactions, items = generate(SyntheticSpec(n_users=120, n_items=60, n_topics=4, seed=3))
    tower, _, blocks = request.param.partition(", ")
    config = TowerConfig(user_tower=tower, history_length=12, epochs=1, batch_size=32, dropout=0.0,
                         gated_blocks=blocks == "gated blocks", feed_forward_mult=2 if blocks else 1)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()
    return trained


def _outputs(trained, windows: list[list[int]]) -> torch.Tensor:
    tower = trained.model.user_tower
    vectors = trained.model.item_tower({name: t for name, t in trained.item_inputs.items()})
    vectors = torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])
    windows = torch.tensor(windows)
    with torch.no_grad():
        return tower(vectors[windows], windows > 0, None)


def test_a_later_item_never_changes_an_earlier_position(model):
    before = _outputs(model, [[0, 0, 3, 8, 12, 5, 7, 9, 1, 4, 2, 6]])
    after = _outputs(model, [[0, 0, 3, 8, 12, 5, 7, 9, 1, 4, 2, 44]])  # only the newest item differs
    torch.testing.assert_close(before[0, :-1], after[0, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[0, -1], after[0, -1])


def test_padding_changes_nothing(model):
    padded = _outputs(model, [[0] * 9 + [3, 8, 12]])
    less_padding = _outputs(model, [[0, 0, 3, 8, 12]])
    none = _outputs(model, [[3, 8, 12]])
    in_a_batch = _outputs(model, [[0] * 9 + [3, 8, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    for other in (less_padding[0, -3:], none[0], in_a_batch[0, -3:]):
        torch.testing.assert_close(padded[0, -3:], other, rtol=0, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_a_gated_block_adds_its_branches_in_proportion_to_their_gates():
    torch.manual_seed(0)
    block = AttentionBlock(8, 2, 0.0, 16, gated=True)
    x, mask = torch.randn(2, 5, 8), torch.tril(torch.ones(5, 5, dtype=torch.bool))[None, None]
    with torch.no_grad():
        for gate in (block.attention_gate, block.feed_forward_gate):
            gate.weight.zero_()
            gate.bias.fill_(-1e4)  # shut
        torch.testing.assert_close(block(x, mask), x, rtol=0, atol=0)
        block.attention_gate.bias.fill_(1e4)  # only the attention open: x plus its attention, as computed by hand
        normed = block.attention_norm(x)
        q, k, v = block.qkv(normed).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-1, -2)) / 2.0 + torch.where(mask, 0.0, -torch.inf), dim=-1)
        attended = block.out((weights @ v).transpose(1, 2).reshape(2, 5, 8))
        torch.testing.assert_close(block(x, mask), x + attended, rtol=1e-5, atol=1e-5)
        block.feed_forward_gate.bias.fill_(0.0)  # half open
        after = x + attended
        expected = after + 0.5 * block.feed_forward(block.feed_forward_norm(after))
        torch.testing.assert_close(block(x, mask), expected, rtol=1e-5, atol=1e-5)


def test_serving_reads_the_last_position_of_the_users_window(model):
    users = np.array([model.user_ids[0], -1])  # a known user, and one with no history
    histories = Histories.of([[3, 8, 12], []], users=users)
    vectors = user_vectors(model, users, histories)
    expected = history_queries(model, torch.tensor([[0] * 9 + [3, 8, 12]]), {
        name: t[[int(model.user_index(users[:1])[0])]] for name, t in model.user_inputs.items()})
    np.testing.assert_allclose(vectors[0], expected[0].detach().numpy(), atol=1e-6)
    assert vectors.shape == (2, model.config.vector_dim) and np.isfinite(vectors).all()
    assert vectors[0, -1] == 1.0  # the layout's constant slot


def test_users_served_in_batches_of_like_lengths_each_get_their_own_windows_vector(model, monkeypatch):
    # query_vectors sorts users by history length and reads only the columns their batch needs;
    # each user's vector is the tower's last position over their whole padded window all the same
    import towerbridge.towers.history_tower as history_tower

    monkeypatch.setattr(history_tower, "BATCH", 3 * model.config.history_length)  # batches of 3 users
    rng = np.random.default_rng(0)
    lengths = rng.permutation([0, 1, 2, 3, 5, 8, 12, 15, 1, 4, 12, 2, 7])  # 15: longer than the window
    users = model.user_ids[:len(lengths)]
    windows = [list(rng.integers(1, 61, size=n)) for n in lengths]
    vectors = user_vectors(model, users, Histories.of(windows, users=users))
    length = model.config.history_length
    for vector, window in zip(vectors, windows):
        padded = [0] * (length - len(window[-length:])) + window[-length:]
        expected = user_layout(_outputs(model, [padded])[:, -1])[0].numpy()
        np.testing.assert_allclose(vector, expected, rtol=0, atol=1e-5)


def test_users_served_in_batches_of_like_lengths_each_get_their_own_features(monkeypatch):
    # the users' features are gathered in the same order as their sorted windows
    import towerbridge.towers.history_tower as history_tower
    from towerbridge.towers.trained import gather

    interactions, items = generate(SyntheticSpec(n_users=60, n_items=40, n_topics=4, seed=4))
    users = pd.DataFrame({"user_id": np.unique(interactions["user_id"])})
    users["age"] = np.arange(len(users)) * 7 % 60 + 15
    trained = prepare(interactions, items, users, TowerConfig(history_length=12, epochs=1, dropout=0.0))
    trained.model.eval()
    assert trained.model.user_tower.features.tower is not None  # the age feature is read
    monkeypatch.setattr(history_tower, "BATCH", 2 * trained.config.history_length)  # batches of 2 users
    rng = np.random.default_rng(1)
    chosen = trained.user_ids[rng.permutation(len(trained.user_ids))[:9]]
    windows = [list(rng.integers(1, 41, size=n)) for n in (5, 0, 11, 2, 7, 1, 12, 3, 9)]
    vectors = user_vectors(trained, chosen, Histories.of(windows, users=chosen))
    for user, vector, window in zip(chosen, vectors, windows):
        padded = torch.tensor([[0] * (12 - len(window)) + window])
        own = gather(trained.user_inputs, torch.from_numpy(trained.user_index(np.array([user]))))
        expected = history_queries(trained, padded, own)[0].detach().numpy()
        np.testing.assert_allclose(vector, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tower", ["sequence", "pooled"])
def test_training_on_every_position_learns_and_early_stopping_keeps_the_best_epoch(tower):
    interactions, items = generate(SyntheticSpec(n_users=300, n_items=120, n_topics=6, seed=5))
    config = TowerConfig(user_tower=tower, history_length=20, epochs=4, batch_size=64, learning_rate=0.005,
                         early_stopping_patience=2, validation_users=200)
    trained = train(interactions, items, None, config, progress=False)
    losses = [epoch["loss_per_example"] for epoch in trained.history]
    assert losses[-1] < losses[0]
    assert all("validation_hit_rate@50" in epoch for epoch in trained.history)


def test_a_plain_inner_product_learns_vector_lengths_and_ranks_as_served():
    from towerbridge.errors import ConfigError
    from towerbridge.towers.vectors import item_vectors

    interactions, items = generate(SyntheticSpec(n_users=300, n_items=120, n_topics=6, seed=5))
    config = TowerConfig(user_tower="sequence", history_length=20, epochs=3, batch_size=64, similarity="dot",
                         temperature=1.0)
    trained = train(interactions, items, None, config, progress=False)
    losses = [epoch["loss_per_example"] for epoch in trained.history]
    assert losses[-1] < losses[0]
    _, vectors = item_vectors(trained)
    lengths = np.linalg.norm(vectors[:, :-1], axis=1)
    assert lengths.std() > 0.01 and not np.allclose(lengths, 1.0)  # not unit vectors
    users = np.unique(interactions["user_id"])[:20]
    histories = Histories.from_interactions(interactions, trained.item_index)
    queries = user_vectors(trained, users, histories)
    # the served inner product is the trained logit: the query tower's output · the item tower's,
    # over the temperature (learned by the sequence tower, from 1.0 here)
    windows = torch.from_numpy(histories.windows(np.arange(20), config.history_length))
    with torch.no_grad():
        direct = history_queries(trained, windows, {})[:, :-1] @ trained.model.item_tower(
            {name: tensor[1:] for name, tensor in trained.item_inputs.items()}).T / trained.config.temperature
    np.testing.assert_allclose(queries @ vectors.T, direct.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="similarity must be 'cosine' or 'dot'"):
        TowerConfig(similarity="euclid")


def test_a_resumed_history_tower_ends_where_a_straight_run_ends(tmp_path):
    # dropout draws from torch's generator: its state travels in the checkpoint with numpy's
    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=9))
    config = {"user_tower": "sequence", "history_length": 16, "batch_size": 64, "dropout": 0.3, "seed": 3}
    straight = train(interactions, items, None, TowerConfig(**config, epochs=3), progress=False)
    train(interactions, items, None, TowerConfig(**config, epochs=2), progress=False, checkpoint_dir=tmp_path)
    torch.rand(1000)  # whatever else ran in between
    resumed = train(interactions, items, None, TowerConfig(**config, epochs=3), progress=False,
                    checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    width = straight.config.tower_dim
    for name, weights in straight.model.state_dict().items():
        mine = resumed.model.state_dict()[name]
        if name.endswith("qkv.bias"):
            # The keys' bias has no gradient (a softmax ignores a shift shared by all keys): Adam
            # scales the rounding noise of its zero gradient into steps, which differ with the
            # order of floating-point sums (threads, load). The queries' and values' parts count.
            keep = torch.ones(len(weights), dtype=torch.bool)
            keep[width:2 * width] = False
            weights, mine = weights[keep], mine[keep]
        torch.testing.assert_close(mine, weights, rtol=1e-5, atol=1e-6)


def test_sampled_negatives_train_where_the_catalog_is_too_large_for_a_full_softmax():
    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=2, batch_size=64, full_softmax_items=10,
                         mixed_negatives=32)
    trained = train(interactions, items, None, config, progress=False)
    assert np.isfinite([epoch["loss_per_example"] for epoch in trained.history]).all()


def test_the_sampled_softmax_is_the_full_one_when_the_sample_holds_the_whole_catalog():
    from dataclasses import replace

    from towerbridge.towers.parallel import SINGLE

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=1, batch_size=64, seed=3)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()  # no dropout: the same queries both ways
    task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
    batch = torch.arange(64)
    full = task.loss(batch, np.random.default_rng(0)).item()
    # a catalog "too large" for the full softmax, and 5,000 uniform draws: every item is in the sample
    trained.config = replace(config, full_softmax_items=10, mixed_negatives=5000)
    task.full = False
    assert task.loss(batch, np.random.default_rng(0)).item() == pytest.approx(full, rel=1e-5)
    # with the logQ correction every item was sure to be drawn: the correction is next to nothing
    trained.config = replace(trained.config, logq_correction=True)
    assert task.loss(batch, np.random.default_rng(0)).item() == pytest.approx(full, rel=1e-4)
    # two histories and no uniform draws: a sample of part of the catalog, fewer negatives, a smaller
    # loss; the correction raises the logits of the items less likely to be drawn
    two = torch.arange(2)
    task.full, trained.config = True, config
    whole = task.loss(two, np.random.default_rng(0)).item()
    task.full, trained.config = False, replace(config, full_softmax_items=10, mixed_negatives=0)
    few = task.loss(two, np.random.default_rng(0)).item()
    trained.config = replace(trained.config, logq_correction=True)
    assert few < whole and task.loss(two, np.random.default_rng(0)).item() > few


@pytest.mark.parametrize("full", [True, False])
def test_future_targets_add_the_items_after_the_next_weighted(full):
    from dataclasses import replace

    from towerbridge.towers.parallel import SINGLE

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=1, batch_size=64, seed=3,
                         full_softmax_items=100 if full else 10, mixed_negatives=0 if full else 40)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()  # no dropout: the same queries every time
    task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
    batch = torch.arange(64)

    def loss(**settings) -> float:
        trained.config = replace(config, **settings)
        return task.loss(batch, np.random.default_rng(0)).item()

    plain = loss()
    assert loss(future_targets=2, future_weight=0.0) == pytest.approx(plain, rel=1e-6)
    both = loss(future_targets=2, future_weight=0.5)
    three = loss(future_targets=3, future_weight=0.5)
    # the item two steps ahead of each position, as the only target: the next one's column shifted
    targets = task.targets
    task.targets = torch.nn.functional.pad(targets[:, 1:], (0, 1)) * (targets > 0)  # not from padding
    ahead = loss()
    task.targets = targets
    assert both == pytest.approx(plain + 0.5 * ahead, rel=1e-5)
    assert three > both > plain


def test_a_positions_exclusions_are_the_users_items_up_to_it_or_in_its_window():
    inputs = torch.tensor([[0, 0, 4, 7, 2], [5, 6, 5, 1, 3]])
    targets = torch.tensor([[0, 0, 7, 2, 9], [6, 5, 1, 3, 8]])  # user 1 watches item 5 again
    keep = targets > 0
    kept = [(b, t) for b in range(2) for t in range(5) if keep[b, t]]  # the rows, as queries[keep] orders them

    def as_sets(rows, items):
        found = [set() for _ in kept]
        for row, item in zip(rows.tolist(), items.tolist()):
            found[row].add(item)
        return found

    rows, items = history_exclusions(inputs, targets, keep, "seen")
    assert rows.tolist() == sorted(rows.tolist())
    assert as_sets(rows, items) == [{4}, {4, 7}, {4, 7, 2},
                                    # 5 is not excluded where it is the target, though seen
                                    {5}, {6}, {5, 6}, {5, 6, 1}, {5, 6, 1, 3}]
    rows, items = history_exclusions(inputs, targets, keep, "window")
    assert rows.tolist() == sorted(rows.tolist())
    assert as_sets(rows, items) == [{4, 2, 9}, {4, 7, 9}, {4, 7, 2},
                                    {5, 1, 3, 8}, {6, 1, 3, 8}, {5, 6, 3, 8}, {5, 6, 1, 8}, {5, 6, 1, 3}]


@pytest.mark.parametrize("full", [True, False])
def test_excluding_the_users_items_takes_them_out_of_the_loss(full):
    from dataclasses import replace

    from towerbridge.towers.parallel import SINGLE

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=1, batch_size=64, seed=3,
                         full_softmax_items=100 if full else 10, mixed_negatives=0 if full else 40)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()  # no dropout: the same queries every time
    task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
    batch = torch.arange(64)

    def loss(mode: str) -> float:
        trained.config = replace(config, exclude_history=mode)
        return task.loss(batch, np.random.default_rng(0)).item()

    # fewer terms in each normaliser: the whole window takes out more than the items seen so far
    plain, seen, window = loss("off"), loss("seen"), loss("window")
    assert window < seen < plain
    # and they train, on the sampled softmax too
    trained = train(interactions, items, None, replace(config, epochs=2, exclude_history="seen"), progress=False)
    assert np.isfinite([epoch["loss_per_example"] for epoch in trained.history]).all()


def test_exclusions_keep_every_target_of_a_position_and_work_with_every_softmax():
    from dataclasses import replace

    from towerbridge.errors import ConfigError
    from towerbridge.towers.parallel import SINGLE

    with pytest.raises(ConfigError, match="exclude_history must be 'off', 'seen' or 'window', got 'all'"):
        TowerConfig(user_tower="sequence", exclude_history="all")
    assert TowerConfig(user_tower="sequence").exclude_history == "seen"
    assert TowerConfig(user_tower="pooled").exclude_history == "off"
    # from the command line (--set): "off" is a value, not the "none" that means the default
    from towerbridge.towers.config import parse_setting

    assert parse_setting("exclude_history=off") == ("exclude_history", "off")
    assert TowerConfig.for_tower("sequence", **dict([parse_setting("exclude_history=off")])).exclude_history == "off"
    # with future targets, an item two ahead stays in the softmax though seen before (item 5 at
    # the first position)
    inputs, ahead = torch.tensor([[5, 6, 7]]), torch.tensor([[[6, 5], [7, 1], [1, 0]]])
    rows, items = history_exclusions(inputs, ahead, ahead[..., 0] > 0, "seen")
    assert list(zip(rows.tolist(), items.tolist())) == [(1, 5), (1, 6), (2, 5), (2, 6), (2, 7)]

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=1, batch_size=64, seed=3)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()  # no dropout: the same queries every time
    task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
    batch, catalog = torch.arange(64), len(trained.item_ids)

    def loss(**settings) -> float:
        trained.config = replace(config, **settings)
        return task.loss(batch, np.random.default_rng(0)).item()

    for mode in ("seen", "window"):
        # drawing every item uniformly is the full softmax, exclusions and all
        whole = loss(exclude_history=mode)
        assert loss(exclude_history=mode, uniform_negatives=catalog) == pytest.approx(whole, rel=1e-5)
        assert loss(exclude_history=mode, uniform_negatives=40) < loss(exclude_history="off", uniform_negatives=40)
        # further targets of weight 0 add nothing, exclusions and all
        assert loss(exclude_history=mode, future_targets=2, future_weight=0.0) == pytest.approx(whole, rel=1e-6)
        assert loss(exclude_history=mode, future_targets=2, future_weight=0.5) > whole


def test_uniform_negatives_replace_the_catalog_with_the_batchs_draws():
    from dataclasses import replace

    from towerbridge.towers.parallel import SINGLE

    interactions, items = generate(SyntheticSpec(n_users=200, n_items=100, n_topics=5, seed=7))
    config = TowerConfig(user_tower="sequence", history_length=16, epochs=1, batch_size=64, seed=3)
    trained = prepare(interactions, items, None, config)
    trained.model.eval()  # no dropout: the same queries every time
    batch, catalog = torch.arange(64), len(trained.item_ids)

    def loss(seed: int = 0, **settings) -> float:
        trained.config = replace(config, **settings)
        task = trained.model.user_tower.examples(trained, interactions, None, torch.device("cpu"), SINGLE)
        return task.loss(batch, np.random.default_rng(seed)).item()

    whole = loss()  # the full softmax
    # drawing every item (or more than there are) is the full softmax, above the full softmax's
    # catalog threshold too
    assert loss(uniform_negatives=catalog) == pytest.approx(whole, rel=1e-5)
    assert loss(uniform_negatives=10 * catalog, full_softmax_items=10) == pytest.approx(whole, rel=1e-5)
    # fewer draws: fewer terms in each softmax's normaliser, so a smaller loss, drawn afresh each batch
    few = [loss(seed, uniform_negatives=20) for seed in (0, 1, 2)]
    assert all(value < whole for value in few) and len(set(few)) == 3


def test_the_logq_correction_is_on_exactly_where_the_catalog_is_sampled():
    from towerbridge.towers.train import prepare

    interactions, items = generate(SyntheticSpec(n_users=100, n_items=60, n_topics=4, seed=2))
    assert TowerConfig(user_tower="sequence").logq_correction is None
    full = prepare(interactions, items, None, TowerConfig(user_tower="sequence", full_softmax_items=60))
    sampled = prepare(interactions, items, None, TowerConfig(user_tower="sequence", full_softmax_items=59))
    assert (full.config.logq_correction, sampled.config.logq_correction) == (False, True)
    chosen = prepare(interactions, items, None, TowerConfig(user_tower="sequence", full_softmax_items=59,
                                                            logq_correction=False))
    assert chosen.config.logq_correction is False  # a choice is kept
    uniform = prepare(interactions, items, None, TowerConfig(user_tower="sequence", full_softmax_items=59,
                                                             uniform_negatives=20))
    assert uniform.config.logq_correction is False  # uniform draws need no correction
