"""Data-parallel training with PyTorch DDP: this process's place among the processes, and
one training step that DDP wraps. With one process (the default) both are plain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.query import TrainingTask


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

    def generator(self, seed: int) -> np.random.Generator:
        """The generator of this process's batches. With several processes each draws its own
        batches and dropout masks (torch's generator is seeded per process too); the initial
        weights are the same everywhere."""
        if not self.distributed:
            return np.random.default_rng(seed)
        torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))
        return np.random.default_rng([seed, self.rank])

    def epoch_size(self, task: TrainingTask, batch_size: int, device: torch.device) -> tuple[int, int]:
        """``(examples, batches)`` of one epoch over every process. Every process takes the
        same number of steps, and none gets an empty batch."""
        examples = int(self.all_sum([task.examples], device)[0])
        batches = -(-examples // batch_size)
        if self.distributed:
            fewest = int(self.all_sum([task.examples], device, dist.ReduceOp.MIN)[0])
            batches = max(1, min(batches, fewest))
        return examples, batches

    def batches(self, task: TrainingTask, generator: np.random.Generator, batches: int, batch_size: int,
                device: torch.device) -> list[torch.Tensor]:
        """One epoch's batches of this process's examples: ``batch_size`` each with one process;
        with several, this process's share of each global batch."""
        if self.distributed:
            order = task.order(generator, size=-(-task.examples // batches))
            return [torch.from_numpy(batch).to(device) for batch in np.array_split(order, batches)]
        order = torch.from_numpy(task.order(generator)).to(device)
        # a softmax over one candidate has nothing to learn from
        return [batch for batch in (order[start:start + batch_size] for start in range(0, task.examples, batch_size))
                if len(batch) >= 2]

    def mean_metric(self, task: TrainingTask, device: torch.device) -> float | None:
        """``task.validate()``, with several processes the mean over every process's validation users."""
        metric = task.validate()
        if metric is None or not self.distributed:
            return metric
        hits, count = self.all_sum([metric * task.validation_count if task.validation_count else 0.0,
                                    task.validation_count], device)
        return hits / max(1.0, count)


SINGLE = Replica()


class _Loss(torch.nn.Module):
    """One batch's loss as a module, so that DDP can wrap it: the model's parameters are this
    module's, ``forward`` is ``task.loss``."""

    def __init__(self, model: torch.nn.Module, task: TrainingTask) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        return self.task.loss(batch, generator)


class TrainingStep:
    """One optimizer step on one batch of ``task``'s examples.

    With several processes (``replica``) the loss is wrapped in DDP: each process computes its
    share of the global batch and the summed gradients are all-reduced, so all processes hold
    the same weights after every step. Embedding tables with sparse gradients stay out of DDP's
    reduction: gloo's sparse all-reduce is not safe when the processes' gradients touch
    different rows (BENCHMARKS.md); they are summed with dense collectives instead."""

    def __init__(self, model: torch.nn.Module, task: TrainingTask, replica: Replica, device: torch.device) -> None:
        self.replica = replica
        loss = _Loss(model, task)
        self.sparse = list(sparse_tables(loss).values()) if replica.distributed else []
        if replica.distributed:
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                loss, list(sparse_tables(loss)))
            self.loss: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
                loss, device_ids=[device] if device.type == "cuda" else None)
        else:
            self.loss = loss

    def __call__(self, batch: torch.Tensor, generator: np.random.Generator, optimizer) -> float:
        """Take the step; return this process's loss on ``batch``."""
        loss = self.loss(batch, generator)
        optimizer.zero_grad()
        # DDP averages the processes' gradients; times ``world``, they are the global batch's sum
        (loss * self.replica.world if self.replica.distributed else loss).backward()
        if self.sparse:
            _all_reduce_sparse(self.sparse, self.replica.world)
        optimizer.step()
        return loss.item()


def sparse_tables(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
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
