"""The training loop: plain code from top to bottom."""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder, FeatureSpec, check_columns, default_spec
from towerbridge.towers.history import Histories
from towerbridge.towers.loss import full_softmax_loss, retrieval_loss
from towerbridge.towers.metrics import factorized_top_k
from towerbridge.towers.model import Inputs, TwoTowerModel
from towerbridge.towers.trained import TrainedModel, gather, lookup
from towerbridge.towers.vectors import history_queries, item_layout, user_layout


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
            item_counts: np.ndarray | None = None) -> TrainedModel:
    """Vocabularies, encoders, feature tensors and a freshly initialised model.

    user_ids, item_counts: the training users (sorted) and each catalog item's training
    interactions, when ``interactions`` is only a shard of the training data (one training
    process's part); by default, from ``interactions``."""
    spec = spec or default_spec([] if users is None else list(users.columns), list(items.columns),
                                config.use_features)
    check_columns(spec.user, users, "user")
    check_columns(spec.item, items, "item")
    user_ids = np.unique(interactions["user_id"].to_numpy()) if user_ids is None else user_ids
    item_ids = np.unique(items["item_id"].to_numpy())
    counts = item_counts if item_counts is not None else \
        np.bincount(lookup(item_ids, interactions["item_id"].to_numpy()), minlength=len(item_ids) + 1)[1:]
    train_users = None if users is None else users[users["user_id"].isin(user_ids)]
    user_encoders, item_encoders = fit_encoders(spec.user, train_users), fit_encoders(spec.item, items)
    # Items without training interactions hide their id (index 0, a zero vector): their
    # untrained id embedding would be noise, their other features are not.
    item_id_index = np.where(counts > 0, np.arange(1, len(item_ids) + 1), 0)
    torch.manual_seed(config.seed)
    return TrainedModel(
        config=config, spec=spec,
        model=TwoTowerModel(user_encoders, item_encoders, len(user_ids), len(item_ids), config),
        user_ids=user_ids, item_ids=item_ids, item_counts=counts,
        user_encoders=user_encoders, item_encoders=item_encoders,
        user_inputs=encode(user_encoders, user_ids, users, "user_id", np.arange(1, len(user_ids) + 1)),
        item_inputs=encode(item_encoders, item_ids, items, "item_id", item_id_index),
    )


class Optimizers:
    """One optimizer for the dense parameters and, when some embedding tables have sparse
    gradients, one for those (Adam's sparse form is ``SparseAdam``; Adagrad takes both)."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

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


def make_optimizer(model: torch.nn.Module, config: TowerConfig) -> Optimizers:
    sparse = [layer.weight for layer in model.modules()
              if isinstance(layer, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and layer.sparse]
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


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Replica:
    """This process's place among the data-parallel processes of one training (PyTorch DDP;
    ``torch.distributed`` initialised by the caller, ``towerbridge.towers.distributed``). Each
    process trains on its own shard of the users; the default is the only process."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def validation_users(self, config: TowerConfig) -> int:
        """This process's share of the early-stopping users."""
        return -(-config.validation_users // self.world)

    def all_sum(self, values: list[float], device: torch.device, op=None) -> list[float]:
        """``values`` summed over the processes (or reduced with ``op``)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor.tolist()


SINGLE = Replica()


def validation_split(interactions: pd.DataFrame, config: TowerConfig,
                     limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """For early stopping: the last interaction of up to ``validation_users`` (or ``limit``)
    sampled users (with at least two interactions) is set aside. Returns ``(train, validation)``."""
    if not config.early_stopping_patience:
        return interactions, None
    ordered = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    last = ordered[~ordered["user_id"].duplicated(keep="last") & ordered["user_id"].duplicated(keep=False)]
    chosen = np.random.default_rng(config.seed).permutation(last.index.to_numpy())[:limit or config.validation_users]
    return interactions.drop(index=chosen), interactions.loc[np.sort(chosen)]


@torch.inference_mode()
def validation_hit_rate(trained: TrainedModel, validation: pd.DataFrame, device: torch.device) -> float:
    """Factorized top-k accuracy (k = ``validation_k``) of the validation items over the whole
    catalog, scored as served: ``user·item / temperature + prior``."""
    config, model = trained.config, trained.model
    model.eval()
    items = torch.arange(1, len(trained.item_ids) + 1)
    item_vectors = item_layout(model.item_tower(to_device(gather(trained.item_inputs, items), device)),
                               torch.from_numpy(trained.item_log_prior()), config)
    users = torch.from_numpy(trained.user_index(validation["user_id"].to_numpy()))
    queries = user_layout(model.user_tower(to_device(gather(trained.user_inputs, users), device)))
    positive = torch.from_numpy(trained.item_index(validation["item_id"].to_numpy()) - 1).to(device)
    model.train()
    key = f"factorized_top_k/top_{config.validation_k}_categorical_accuracy"
    return factorized_top_k(queries, item_vectors, positive, ks=(config.validation_k,))[key]


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def _save_checkpoint(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "checkpoint.pt.partial"
    torch.save(state, partial)
    partial.replace(directory / "checkpoint.pt")


def _load_checkpoint(directory: Path | None, config: TowerConfig, processes: int = 1) -> dict | None:
    """The checkpoint of an earlier run with the same settings and number of processes
    (``epochs`` may differ, to train further), if there is one and it is not past ``epochs``."""
    if directory is None or not (directory / "checkpoint.pt").exists():
        return None
    try:
        state = torch.load(directory / "checkpoint.pt", map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        # never unpickled beyond tensors; an unreadable checkpoint only costs the epochs it held
        logging.getLogger(__name__).warning("ignoring unreadable checkpoint %s (%s); training from the start",
                                            directory / "checkpoint.pt", str(error).splitlines()[0][:200])
        return None
    settings = {**config.to_dict(), "epochs": None}
    same = {**state.get("config", {}), "epochs": None} == settings and state.get("processes", 1) == processes
    return state if same and state["epoch"] <= config.epochs else None


def train(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
          config: TowerConfig, spec: FeatureSpec | None = None, progress: bool = True,
          checkpoint_dir: str | Path | None = None, replica: Replica = SINGLE,
          user_ids: np.ndarray | None = None) -> TrainedModel:
    """Train both towers on ``interactions`` (user_id, item_id, timestamp).

    The id tower learns from one example per interaction with the in-batch softmax; the
    history towers from every position of every user's history (``HistoryTask``).
    items: the whole catalog (``item_id`` and feature columns), so that items without
    training interactions still get an embedding from their features.
    users: ``user_id`` and feature columns, or None for id-only users.
    checkpoint_dir: after every epoch the model, optimizer and random state are saved
    there; a later call with the same config resumes after the last finished epoch.
    replica, user_ids: for one of several data-parallel processes, ``interactions`` is this
    process's shard (whole users) and ``user_ids`` every training user, sorted; item counts
    are summed over the processes.
    """
    device = pick_device(config.device)
    if config.user_tower == "id":
        interactions, validation = validation_split(
            interactions, config, replica.validation_users(config) if replica.distributed else None)
    counts = None
    if replica.distributed:
        item_ids = np.unique(items["item_id"].to_numpy())
        local = np.bincount(lookup(item_ids, interactions["item_id"].to_numpy()), minlength=len(item_ids) + 1)[1:]
        counts = np.rint(replica.all_sum(local.astype(np.float64).tolist(), device)).astype(np.int64)
    trained = prepare(interactions, items, users, config, spec, user_ids=user_ids, item_counts=counts)
    if config.user_tower == "id":
        task: InteractionTask | HistoryTask = InteractionTask(trained, interactions, validation, device)
    else:
        task = HistoryTask(trained, Histories.from_interactions(interactions, trained.item_index), device,
                           validation_users=replica.validation_users(config))
    return fit(trained, task, device, progress, Path(checkpoint_dir) if checkpoint_dir else None, replica)


class InteractionTask:
    """The id tower's examples: one per training interaction, in-batch softmax with the logQ
    correction (and ``mixed_negatives`` uniform extra negatives)."""

    def __init__(self, trained: TrainedModel, interactions: pd.DataFrame, validation: pd.DataFrame | None,
                 device: torch.device) -> None:
        self.trained, self.validation, self.device = trained, validation, device
        self.user_inputs = to_device(trained.user_inputs, device)
        self.item_inputs = to_device(trained.item_inputs, device)
        self.users = torch.from_numpy(trained.user_index(interactions["user_id"].to_numpy())).to(device)
        self.items = torch.from_numpy(trained.item_index(interactions["item_id"].to_numpy())).to(device)
        # In-batch negatives are drawn in proportion to training frequency: that is their sampling probability.
        self.sampling_probability = torch.from_numpy(
            np.concatenate([[1.0], trained.item_counts]) / max(1, trained.item_counts.sum())).float().to(device)
        self.examples = len(self.users)
        self.validation_count = 0 if validation is None else len(validation)

    def order(self, generator: np.random.Generator, size: int | None = None) -> np.ndarray:
        """The examples of one epoch, shuffled."""
        return generator.permutation(self.examples)

    def loss(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        model, config = self.trained.model, self.trained.config
        user_batch, item_batch = self.users[batch], self.items[batch]
        extra = {}
        if config.mixed_negatives:
            # Mixed negative sampling: items drawn uniformly from the whole catalog.
            n_catalog = len(self.trained.item_ids)
            sampled = torch.from_numpy(generator.integers(1, n_catalog + 1, config.mixed_negatives)).to(self.device)
            extra = {
                "extra_candidate_embeddings": model.item_tower(gather(self.item_inputs, sampled)),
                "extra_sampling_probability": torch.full((len(sampled),), 1.0 / n_catalog, device=self.device),
                "extra_candidate_ids": sampled,
            }
        return retrieval_loss(
            model.user_tower(gather(self.user_inputs, user_batch)),
            model.item_tower(gather(self.item_inputs, item_batch)),
            temperature=config.temperature,
            candidate_sampling_probability=(
                self.sampling_probability[item_batch] if config.logq_correction else None),
            candidate_ids=item_batch,
            num_hard_negatives=config.num_hard_negatives,
            **extra,
        )

    def validate(self) -> float | None:
        return None if self.validation is None else validation_hit_rate(self.trained, self.validation, self.device)


class HistoryTask:
    """The history towers' examples: one per user, predicting the next item at every
    position of the user's last ``history_length + 1`` items.

    The loss is the softmax over every catalog item (``full_softmax_items`` at most), or over
    the batch's targets and ``mixed_negatives`` uniform samples with the logQ correction.
    With early stopping, each user's last training item is the validation target, predicted
    from the items before it, and never a training target."""

    def __init__(self, trained: TrainedModel, histories: Histories, device: torch.device,
                 validation_users: int | None = None) -> None:
        config = trained.config
        self.trained, self.histories, self.device = trained, histories, device
        self.user_inputs = to_device(trained.user_inputs, device)
        self.item_inputs = to_device(trained.item_inputs, device)
        hold = 1 if config.early_stopping_patience else 0
        inputs, targets = histories.training_pairs(config.history_length, drop_last=hold)
        has_target = (targets > 0).any(axis=1)
        self.inputs = torch.from_numpy(inputs[has_target]).to(device)
        self.targets = torch.from_numpy(targets[has_target]).to(device)
        self.user_rows = torch.from_numpy(trained.user_index(histories.users[has_target])).to(device)
        self.examples = len(self.inputs)
        self.lengths = (inputs[has_target] > 0).sum(axis=1)
        self.full = len(trained.item_ids) <= config.full_softmax_items
        counts = np.concatenate([[0], trained.item_counts]).astype(np.float64)
        self.sampling_probability = torch.from_numpy(counts / max(1.0, counts.sum())).float().to(device)
        self.validation, self.validation_count = None, 0
        if hold:
            rows = np.flatnonzero(histories.lengths() >= 2)
            rows = np.random.default_rng(config.seed).permutation(rows)[:validation_users or config.validation_users]
            self.validation_count = len(rows)
            rows = np.sort(rows)
            self.validation = (histories.windows(rows, config.history_length, drop_last=1),
                               histories.items[histories.starts[rows + 1] - 1],
                               trained.user_index(histories.users[rows]))

    def order(self, generator: np.random.Generator, size: int | None = None, pool: int = 32) -> np.ndarray:
        """The histories of one epoch: shuffled, then sorted by length within pools of
        ``pool`` batches, cut into batches (of ``size``, default ``batch_size``), and the
        batches shuffled. A batch is padded to its longest history, so batches of like lengths
        skip most of the padding."""
        size = size or self.trained.config.batch_size
        shuffled = generator.permutation(self.examples)
        pools = [shuffled[start:start + size * pool] for start in range(0, self.examples, size * pool)]
        ordered = np.concatenate([p[np.argsort(-self.lengths[p], kind="stable")] for p in pools])
        batches = [ordered[start:start + size] for start in range(0, self.examples, size)]
        return np.concatenate([batches[i] for i in generator.permutation(len(batches))])

    def loss(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        model, config = self.trained.model, self.trained.config
        inputs, targets = self.inputs[batch], self.targets[batch]
        used = (inputs > 0).any(dim=0).nonzero()
        start = int(used[0]) if len(used) else inputs.shape[1] - 1
        # columns of padding only are skipped
        inputs, targets = inputs[:, start:].contiguous(), targets[:, start:].contiguous()
        if self.full:
            needed = torch.arange(len(self.trained.item_ids) + 1, device=self.device)
        else:
            sampled = torch.from_numpy(generator.integers(1, len(self.trained.item_ids) + 1,
                                                          config.mixed_negatives)).to(self.device)
            needed = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long, device=self.device),
                                             inputs.flatten(), targets.flatten(), sampled]))
        vectors = model.item_tower(gather(self.item_inputs, needed))
        vectors = torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])  # row 0 (padding) stays 0
        position = torch.searchsorted(needed, inputs) if not self.full else inputs
        queries = model.user_tower(vectors[position], inputs > 0, gather(self.user_inputs, self.user_rows[batch]))
        keep = targets > 0
        queries, positives = queries[keep], targets[keep]
        if self.full:
            return full_softmax_loss(queries, vectors[1:], positives - 1, config.temperature)
        columns = torch.searchsorted(needed, positives)
        return retrieval_loss(queries, vectors[columns], temperature=config.temperature,
                              candidate_sampling_probability=(
                                  self.sampling_probability[positives] if config.logq_correction else None),
                              candidate_ids=positives, num_hard_negatives=config.num_hard_negatives,
                              extra_candidate_embeddings=vectors[torch.searchsorted(needed, sampled)],
                              extra_sampling_probability=torch.full((len(sampled),), 1.0 / len(self.trained.item_ids),
                                                                    device=self.device),
                              extra_candidate_ids=sampled)

    @torch.inference_mode()
    def validate(self) -> float | None:
        """Top-``validation_k`` accuracy of each sampled user's last training item over the catalog."""
        if self.validation is None:
            return None
        windows, targets, user_rows = self.validation
        model, config = self.trained.model, self.trained.config
        model.eval()
        queries = history_queries(self.trained, torch.from_numpy(windows).to(self.device),
                                  gather(self.user_inputs, torch.from_numpy(user_rows).to(self.device)))
        items = item_layout(model.item_tower(gather(self.item_inputs, torch.arange(
            1, len(self.trained.item_ids) + 1, device=self.device))),
            torch.from_numpy(self.trained.item_log_prior()).to(self.device), config)
        model.train()
        key = f"factorized_top_k/top_{config.validation_k}_categorical_accuracy"
        return factorized_top_k(queries, items, torch.from_numpy(targets - 1).to(self.device),
                                ks=(config.validation_k,))[key]


def _torch_rng(device: torch.device) -> torch.Tensor:
    """The state of the random generator dropout draws from on ``device``."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_torch_rng(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
    else:
        torch.set_rng_state(state.cpu())


class _Step(torch.nn.Module):
    """One batch's loss as a module, so that DDP can wrap it: the model's parameters are this
    module's, ``forward`` is ``task.loss``."""

    def __init__(self, model: torch.nn.Module, task: InteractionTask | HistoryTask) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        return self.task.loss(batch, generator)


def _sparse_tables(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weights of ``module``'s embedding tables with sparse gradients, by parameter name."""
    return {f"{name}.weight": layer.weight for name, layer in module.named_modules()
            if isinstance(layer, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and layer.sparse}


def _all_reduce_sparse(weights: list[torch.nn.Parameter], world: int) -> None:
    """Each sparse gradient summed over the processes (and divided by ``world``, as DDP does
    for the dense ones): every process's rows and values are gathered with dense all-gathers,
    padded to the longest, and added up."""
    for weight in weights:
        grad = weight.grad.coalesce() if weight.grad is not None else \
            torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, *weight.shape[1:])),
                                    weight.shape, device=weight.device)
        rows, values = grad.indices()[0], grad.values()
        sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(rows)], device=rows.device))
        longest = int(max(size.item() for size in sizes))
        padded_rows = torch.zeros(longest, dtype=torch.long, device=rows.device)
        padded_values = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=values.device)
        padded_rows[:len(rows)], padded_values[:len(rows)] = rows, values
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_values = [torch.empty_like(padded_values) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_values, padded_values)
        kept = [slice(0, int(size.item())) for size in sizes]
        summed_rows = torch.cat([r[k] for r, k in zip(all_rows, kept)])
        summed_values = torch.cat([v[k] for v, k in zip(all_values, kept)]) / world
        # the rows come from the processes' own coalesced gradients: valid by construction
        weight.grad = torch.sparse_coo_tensor(summed_rows[None], summed_values, weight.shape,
                                              check_invariants=False).coalesce()


def _ranked_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def fit(trained: TrainedModel, task: InteractionTask | HistoryTask, device: torch.device, progress: bool,
        checkpoint_dir: Path | None, replica: Replica = SINGLE) -> TrainedModel:
    """The epochs: shuffled batches of ``task``'s examples, a checkpoint after each epoch,
    early stopping on ``task.validate()`` keeping the best epoch's weights.

    With several processes (``replica``), the model is wrapped in DDP: every process takes the
    same number of steps, each on its share of the global batch from its own shard, and the
    summed gradients are all-reduced, so all processes hold the same weights after every step.
    Process 0 shows the progress and writes the checkpoint (with every process's random state)."""
    config = trained.config
    model = trained.model.to(device)
    rank, world = replica.rank, replica.world
    if replica.distributed:
        # each process draws its own batches and dropout masks; the initial weights are the same
        generator = np.random.default_rng([config.seed, rank])
        torch.manual_seed(_ranked_seed(config.seed, rank))
        wrapped = _Step(model, task)
        sparse = _sparse_tables(wrapped)
        # Sparse tables stay out of DDP's reduction: gloo's sparse all-reduce is not safe when the
        # processes' gradients touch different rows (BENCHMARKS.md); _all_reduce_sparse sums them
        # with dense collectives.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapped, list(sparse))
        step: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device] if device.type == "cuda" else None)
    else:
        generator = np.random.default_rng(config.seed)
        step, sparse = _Step(model, task), {}
    optimizer = make_optimizer(model, config)

    first_epoch, best = 0, {"metric": -1.0, "epoch": 0, "weights": None}
    resumed = _load_checkpoint(checkpoint_dir, config, world)
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.bit_generator.state = resumed["generators"][rank] if replica.distributed else resumed["generator"]
        torch_rng = resumed["torch_rngs"][rank] if replica.distributed else resumed.get("torch_rng")
        if torch_rng is not None:  # dropout's masks go on as they would have (older checkpoints lack it)
            _set_torch_rng(torch_rng, device)
        trained.history, first_epoch, best = resumed["history"], resumed["epoch"], resumed["best"]

    n_examples = int(replica.all_sum([task.examples], device)[0])
    n_batches = -(-n_examples // config.batch_size)
    if replica.distributed:  # the same number of steps everywhere; no process gets an empty batch
        fewest = int(replica.all_sum([task.examples], device, dist.ReduceOp.MIN)[0])
        n_batches = max(1, min(n_batches, fewest))
    bar = tqdm(total=config.epochs * n_batches, initial=first_epoch * n_batches, desc="train", unit="batch",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
    model.train()
    for epoch in range(first_epoch, config.epochs):
        started = time.perf_counter()
        if replica.distributed:
            order = task.order(generator, size=-(-task.examples // n_batches))
            batches = [torch.from_numpy(b).to(device) for b in np.array_split(order, n_batches)]
        else:
            order = torch.from_numpy(task.order(generator)).to(device)
            batches = [order[start:start + config.batch_size] for start in range(0, n_examples, config.batch_size)]
        epoch_loss = 0.0
        for batch in batches:
            if len(batch) < 2 and not replica.distributed:
                continue  # a softmax over one candidate has nothing to learn from
            loss = step(batch, generator)
            optimizer.zero_grad()
            # DDP averages the processes' gradients; times ``world``, they are the global batch's sum
            (loss * world if replica.distributed else loss).backward()
            if replica.distributed and sparse:
                _all_reduce_sparse(list(sparse.values()), world)
            optimizer.step()
            epoch_loss += loss.item()
            bar.update(1)
        [epoch_loss] = replica.all_sum([epoch_loss], device)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "loss_per_example": round(epoch_loss / n_examples, 5),
                  "seconds": round(seconds, 3), "examples_per_s": round(n_examples / seconds, 1)}
        stop = False
        metric = task.validate()
        if metric is not None:
            if replica.distributed:  # the mean over every process's validation users
                hits, count = replica.all_sum([metric * task.validation_count if task.validation_count else 0.0,
                                               task.validation_count], device)
                metric = hits / max(1.0, count)
            record[f"validation_hit_rate@{config.validation_k}"] = round(metric, 5)
            if metric > best["metric"]:
                best = {"metric": metric, "epoch": epoch + 1,
                        "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            stop = epoch + 1 - best["epoch"] >= config.early_stopping_patience
        trained.history.append(record)
        bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss / n_examples:.3f}", ex_s=f"{n_examples / seconds:,.0f}")
        if checkpoint_dir:
            _checkpoint(checkpoint_dir, replica, {
                "config": config.to_dict(), "epoch": epoch + 1, "history": trained.history, "best": best,
                "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                generator.bit_generator.state, _torch_rng(device))
        if stop:
            break
    bar.close()
    if best["weights"] is not None:  # early stopping keeps the best epoch's weights
        model.load_state_dict(best["weights"])
    trained.model = model.cpu().eval()
    return trained


def _checkpoint(directory: Path, replica: Replica, state: dict, generator: dict, torch_rng: torch.Tensor) -> None:
    """Process 0 writes the checkpoint, with every process's random state."""
    if not replica.distributed:
        _save_checkpoint(directory, {**state, "generator": generator, "torch_rng": torch_rng})
        return
    generators: list = [None] * replica.world
    torch_rngs: list = [None] * replica.world
    dist.all_gather_object(generators, generator)
    dist.all_gather_object(torch_rngs, torch_rng.cpu())
    if replica.rank == 0:
        _save_checkpoint(directory, {**state, "processes": replica.world, "generators": generators,
                                     "torch_rngs": torch_rngs})
    dist.barrier()  # no process goes on (and could fail) before the checkpoint is complete
