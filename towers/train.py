"""Training: the model prepared from the data, then the loop, plain code from top to bottom.

What the examples are and how their loss is computed belongs to the query tower
(``QueryTower.examples``); data parallelism to ``towers/parallel.py``; resuming to
``towers/checkpoint.py``."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from towerbridge.errors import ConfigError
from towerbridge.towers import artifact, warm
from towerbridge.towers.averaging import WeightAverage
from towerbridge.towers.checkpoint import Checkpoints
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder, FeatureSpec, check_columns, default_spec
from towerbridge.towers.model import Inputs, TwoTowerModel
from towerbridge.towers.parallel import SINGLE, Replica, TrainingStep, sparse_tables
from towerbridge.towers.query import TrainingTask
from towerbridge.towers.registry import query_tower
from towerbridge.towers.trained import TrainedModel, lookup


def encode(encoders: list[Encoder], ids: np.ndarray, table: pd.DataFrame | None, id_column: str,
           id_index: np.ndarray) -> Inputs:
    """Feature tensors for the entities ``ids`` (vocabulary order), with a zero row 0.

    id_index: what the id feature holds for each entity (its index, or 0 to hide it).
    """
    rows = table.set_index(id_column).reindex(ids) if table is not None else None
    inputs: Inputs = {}
    for encoder in encoders:
        name = encoder.feature.column
        values = id_index if encoder.feature.kind == "id" else encoder.transform(rows[name])
        padded = np.concatenate([np.zeros((1, *values.shape[1:]), dtype=values.dtype), values])
        inputs[name] = torch.from_numpy(padded)
    return inputs


def fit_encoders(spec_side, table: pd.DataFrame | None) -> list[Encoder]:
    return [Encoder(feature) if feature.kind == "id" else Encoder(feature).fit(table[feature.column])
            for feature in spec_side]


def prepare(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
            config: TowerConfig, spec: FeatureSpec | None = None, user_ids: np.ndarray | None = None,
            item_counts: np.ndarray | None = None, parent: Parent | None = None) -> TrainedModel:
    """Vocabularies, encoders, feature tensors and a freshly initialised model.

    user_ids, item_counts: the training users (sorted) and each catalog item's training
    interactions, when ``interactions`` is only a shard of the training data (one training
    process's part); by default, from ``interactions``.
    parent: a trained model to continue (``towers/warm.py``): same feature spec, its numeric
    and bucket encoders kept, its weights carried over."""
    spec = spec or default_spec([] if users is None else list(users.columns), list(items.columns),
                                config.use_features)
    if parent is not None:
        warm.check_compatible(config, parent.model.config, parent.source)
        if parent.model.spec != spec:
            raise ConfigError(f"cannot continue training from {parent.source}: it read other features "
                              f"({parent.model.spec.to_dict()} there, {spec.to_dict()} here); "
                              "train from scratch instead")
    check_columns(spec.user, users, "user")
    check_columns(spec.item, items, "item")
    user_ids = np.unique(interactions["user_id"].to_numpy()) if user_ids is None else user_ids
    item_ids = np.unique(items["item_id"].to_numpy())
    counts = item_counts if item_counts is not None else \
        np.bincount(lookup(item_ids, interactions["item_id"].to_numpy()), minlength=len(item_ids) + 1)[1:]
    if config.logq_correction is None:  # the history towers: corrected exactly where the catalog is sampled
        # in proportion to popularity (uniform draws need no correction)
        config = replace(config, logq_correction=len(item_ids) > config.full_softmax_items
                         and not config.uniform_negatives)
    train_users = None if users is None else users[users["user_id"].isin(user_ids)]
    user_encoders, item_encoders = fit_encoders(spec.user, train_users), fit_encoders(spec.item, items)
    if parent is not None:  # numbers and buckets keep the parent's scale; vocabularies grow
        user_encoders = warm.encoders(parent.model.user_encoders, user_encoders)
        item_encoders = warm.encoders(parent.model.item_encoders, item_encoders)
    # Items without training interactions hide their id (index 0, a zero vector): their
    # untrained id embedding would be noise, their other features are not.
    item_id_index = np.where(counts > 0, np.arange(1, len(item_ids) + 1), 0)
    torch.manual_seed(config.seed)
    trained = TrainedModel(
        config=config, spec=spec,
        model=TwoTowerModel(user_encoders, item_encoders, len(user_ids), len(item_ids), config),
        user_ids=user_ids, item_ids=item_ids, item_counts=counts,
        user_encoders=user_encoders, item_encoders=item_encoders,
        user_inputs=encode(user_encoders, user_ids, users, "user_id", np.arange(1, len(user_ids) + 1)),
        item_inputs=encode(item_encoders, item_ids, items, "item_id", item_id_index),
    )
    if parent is not None:
        warm.carry_weights(trained, parent.model, parent.source)
        trained.lineage = warm.lineage(trained, parent.model, parent.model_id, parent.source, parent.interactions)
    return trained


@dataclass(frozen=True)
class Parent:
    """A trained model to continue, its id and where it was read from (for messages and the
    lineage)."""

    model: TrainedModel
    model_id: str
    source: str
    interactions: int | None = None  # its training interactions
    prepared_dir: str | None = None  # the data it trained on (its train part: what a replay compares with)


class Optimizers:
    """One optimizer for the dense parameters and, when some embedding tables have sparse
    gradients, one for those (Adam's sparse form is ``SparseAdam``; Adagrad takes both)."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    def set_rate(self, rate: float) -> None:
        for part in self.parts:
            for group in part.param_groups:
                group["lr"] = rate

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=True)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("parts", ())) != len(self.parts):
            raise ValueError("the checkpoint's optimizer state does not match this model")
        for part, values in zip(self.parts, state["parts"]):
            part.load_state_dict(values)


def learning_rate(config: TowerConfig, progress: float) -> float:
    """The rate after ``progress`` (0 to 1) of the planned steps (``learning_rate_schedule``)."""
    if config.learning_rate_schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate


def make_optimizer(model: torch.nn.Module, config: TowerConfig) -> Optimizers:
    sparse = list(sparse_tables(model).values())
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    rate = config.learning_rate
    if config.optimizer == "adagrad":
        return Optimizers([torch.optim.Adagrad(dense + sparse, lr=rate)])
    # fused: one kernel per step for all dense parameters (CPU and GPU), not one per tensor
    parts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=rate, fused=True)]
    if sparse:
        parts.append(torch.optim.SparseAdam(sparse, lr=rate))
    return Optimizers(parts)


def read_parent(model_dir: str | None) -> Parent | None:
    """The model at ``model_dir`` to continue (None: none)."""
    if model_dir is None:
        return None
    manifest = artifact.read_manifest(Path(model_dir))
    return Parent(artifact.load(Path(model_dir)), manifest.model_id, str(model_dir), manifest.train_interactions,
                  manifest.prepared_dir)


def replayed(trained: TrainedModel, interactions: pd.DataFrame, parent: Parent, config: TowerConfig) -> pd.DataFrame:
    """The interactions a continued training with ``config.replay`` learns from (``warm.replay``),
    recorded in the model's lineage; all of them, with a warning, when the parent's training data
    is gone (nothing to compare with)."""
    train_part = Path(parent.prepared_dir or "") / "train.parquet"
    if not parent.prepared_dir or not train_part.exists():
        logging.getLogger(__name__).warning(
            "replay: the training data of %s (%s) is gone; training on the whole log", parent.source, train_part)
        return interactions
    columns = ["user_id", "item_id", "timestamp"] if not trained.model.user_tower.reads_history else ["user_id"]
    parent_train = pd.read_parquet(train_part, columns=columns)
    chosen, record = warm.replay(interactions, parent_train, config.replay, config.seed,
                                 by_user=trained.model.user_tower.reads_history)
    trained.lineage = replace(trained.lineage, replay=record.to_dict())
    return chosen


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
          config: TowerConfig, spec: FeatureSpec | None = None, progress: bool = True,
          checkpoint_dir: str | Path | None = None, replica: Replica = SINGLE,
          user_ids: np.ndarray | None = None, parent: Parent | None = None) -> TrainedModel:
    """Train both towers on ``interactions`` (user_id, item_id, timestamp).

    The query tower says what its examples are (``QueryTower.examples``): the id tower one per
    interaction with the in-batch softmax, the history towers every position of every user's
    history.
    items: the whole catalog (``item_id`` and feature columns), so that items without
    training interactions still get an embedding from their features.
    users: ``user_id`` and feature columns, or None for id-only users.
    checkpoint_dir: after every epoch the model, optimizer and random state are saved
    there; a later call with the same config resumes after the last finished epoch.
    replica, user_ids: for one of several data-parallel processes, ``interactions`` is this
    process's shard (whole users) and ``user_ids`` every training user, sorted; item counts
    are summed over the processes.
    parent: continue this trained model (``prepare``) instead of starting from random weights.
    """
    device = pick_device(config.device)
    interactions, validation = query_tower(config.user_tower).hold_out(
        interactions, config, replica.validation_users(config) if replica.distributed else None)
    counts = None
    if replica.distributed:
        item_ids = np.unique(items["item_id"].to_numpy())
        local = np.bincount(lookup(item_ids, interactions["item_id"].to_numpy()), minlength=len(item_ids) + 1)[1:]
        counts = np.rint(replica.all_sum(local.astype(np.float64).tolist(), device)).astype(np.int64)
    trained = prepare(interactions, items, users, config, spec, user_ids=user_ids, item_counts=counts, parent=parent)
    examples = interactions
    if parent is not None and config.replay is not None:
        examples = replayed(trained, interactions, parent, config)
    task = trained.model.user_tower.examples(trained, examples, validation, device, replica)
    return fit(trained, task, device, progress, Path(checkpoint_dir) if checkpoint_dir else None, replica)


def fit(trained: TrainedModel, task: TrainingTask, device: torch.device, progress: bool,
        checkpoint_dir: Path | None, replica: Replica = SINGLE) -> TrainedModel:
    """The epochs: shuffled batches of ``task``'s examples, a checkpoint after each epoch,
    early stopping on ``task.validate()`` keeping the best epoch's weights. With several
    processes (``replica``) every step is data-parallel (``TrainingStep``); process 0 shows
    the progress and writes the checkpoint."""
    config = trained.config
    model = trained.model.to(device)
    generator = replica.generator(config.seed)
    step = TrainingStep(model, task, replica, device)
    optimizer = make_optimizer(model, config)
    # tables with sparse gradients keep their last step's rows: a step touches a few of their
    # rows, and averaging them would pass over every row at every step
    average = (WeightAverage(model, config.ema_decay, leave_out=list(sparse_tables(model).values()))
               if config.ema_decay else None)
    checkpoints = Checkpoints(checkpoint_dir, config, replica)
    state = checkpoints.resume(model, optimizer, generator, device, average)

    n_examples, n_batches = replica.epoch_size(task, config.batch_size, device)
    bar = tqdm(total=config.epochs * n_batches, initial=state.epoch * n_batches, desc="train", unit="batch",
               disable=not progress or replica.rank != 0, dynamic_ncols=True, leave=False)
    model.train()
    # the budget is this training's, over every try: a retry that resumes it counts the time
    # its earlier tries took, and goes on only if some of the budget is left
    began, reason = time.perf_counter() - state.elapsed, "epochs"
    if state.stopped == "time" and (config.time_budget is None or state.elapsed < config.time_budget):
        state.stopped = None  # resumed with a larger budget, or none
    while state.epoch < config.epochs and not state.stopped:
        started = time.perf_counter()
        epoch_loss, seen, done, cut = 0.0, 0, 0, False
        for number, batch in enumerate(replica.batches(task, generator, n_batches, config.batch_size, device)):
            if config.learning_rate_schedule != "constant":  # a constant rate is the optimizer's own
                optimizer.set_rate(learning_rate(config, (state.epoch * n_batches + number) /
                                                 (config.epochs * n_batches)))
            epoch_loss += step(batch, generator, optimizer)
            if average is not None:
                average.update()
            seen, done = seen + len(batch), number + 1
            bar.update(1)
            if config.time_budget is not None and done < n_batches and _past_budget(began, config, replica, done,
                                                                                  device):
                cut = True
                break
        [epoch_loss, seen] = replica.all_sum([epoch_loss, float(seen)], device)
        seconds = time.perf_counter() - started
        epoch_record = {"epoch": state.epoch + 1, "loss_per_example": round(epoch_loss / max(1.0, seen), 5),
                        "seconds": round(seconds, 3), "examples_per_s": round(seen / seconds, 1)}
        if cut:
            epoch_record["batches"] = f"{done}/{n_batches}"
        with average.swapped_in() if average is not None else nullcontext():  # the weights training keeps
            metric = replica.mean_metric(task, device)
            if metric is not None:
                epoch_record[f"validation_hit_rate@{config.validation_k}"] = round(metric, 5)
            state.finish_epoch(epoch_record, metric, model)
        if cut or (config.time_budget is not None and state.epoch < config.epochs
                   and _past_budget(began, config, replica, 0, device)):
            # a retry of this training (the flow's) resumes a finished one, not a fresh budget
            state.stopped, reason = "time", "time"
        shown = {f"val@{config.validation_k}": f"{metric:.4f}"} if metric is not None else {}
        bar.set_postfix(epoch=state.epoch, loss=f"{epoch_loss / max(1.0, seen):.3f}", **shown,
                        ex_s=f"{seen / seconds:,.0f}")
        state.elapsed = time.perf_counter() - began
        checkpoints.save(state, model, optimizer, generator, device, average)
        if metric is not None and state.stale(config.early_stopping_patience):
            reason = "patience"
            break
    reason = reason if reason == "patience" else state.stopped or reason
    bar.close()
    if average is not None:
        average.copy_to_model()
    state.keep_best(model)  # with early stopping, the best epoch's (average, if kept)
    trained.history, trained.stop = state.history, state.stop(reason, config)
    trained.model = model.cpu().eval()
    if trained.model.log_inverse_temperature is not None:  # the model's config records what it learned
        trained.config = replace(config, temperature=trained.model.learned_temperature())
    return trained


# With several processes, how often (in batches) they agree on whether the budget is spent: a
# collective per step would cost more than the check is worth.
BUDGET_CHECK_BATCHES = 8


def _past_budget(began: float, config: TowerConfig, replica: Replica, batches_done: int,
                 device: torch.device) -> bool:
    """Whether training has used its ``time_budget``. With several processes every one must
    stop at the same step: they check together, every ``BUDGET_CHECK_BATCHES`` batches (and at
    the end of an epoch, ``batches_done`` 0), by any process's clock."""
    over = time.perf_counter() - began >= config.time_budget
    if not replica.distributed:
        return over
    if batches_done % BUDGET_CHECK_BATCHES:
        return False
    [count] = replica.all_sum([float(over)], device)
    return count > 0
