"""What a training has done so far, and the checkpoint that lets a new try resume it.

After every epoch the model, the optimizer, the weights' average (``ema_decay``), the epochs'
records, the best epoch so far (for early stopping) and the random state are saved; a later
training with the same settings and number of processes resumes after the last finished epoch
and ends with the weights a straight run would have had (dropout's masks and the batches go on
as they would have).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from towerbridge.towers.averaging import WeightAverage
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.parallel import Replica

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainingState:
    """epoch: epochs finished; history: one record per finished epoch; best: the best
    validation metric so far, its epoch and a copy of its weights (``weights`` None until an
    epoch was validated); elapsed: the seconds the training has run up to its last epoch."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"metric": -1.0, "epoch": 0, "weights": None})
    stopped: str | None = None  # "time": the budget ended this training; a resumed try trains no more
    elapsed: float = 0.0  # seconds this training has run, over all its tries (what its budget counts)

    def finish_epoch(self, record: dict, metric: float | None, model: torch.nn.Module) -> None:
        self.epoch += 1
        self.history.append(record)
        if metric is not None and metric > self.best["metric"]:
            self.best = {"metric": metric, "epoch": self.epoch,
                         "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    def stale(self, patience: int) -> bool:
        """Whether the metric has not improved for ``patience`` epochs."""
        return self.epoch - self.best["epoch"] >= patience

    def keep_best(self, model: torch.nn.Module) -> None:
        """Early stopping keeps the best epoch's weights."""
        if self.best["weights"] is not None:
            model.load_state_dict(self.best["weights"])

    def stop(self, reason: str, config: TowerConfig) -> dict:
        """Why training ended and which epoch's weights it kept: ``reason`` is ``epochs`` (all of
        them ran), ``patience`` (no better validation metric for that many epochs) or ``time``
        (``time_budget`` was spent, maybe in the middle of the last epoch)."""
        record = {"reason": reason, "epochs": self.epoch, "kept_epoch": self.best["epoch"] or self.epoch}
        if reason == "time" and self.history and "batches" in self.history[-1]:
            record["last_epoch_batches"] = self.history[-1]["batches"]
        if self.best["weights"] is not None:
            record["best_metric"] = round(self.best["metric"], 5)
        if reason == "patience":
            record["patience"] = config.early_stopping_patience
        if reason == "time":
            record["time_budget"] = config.time_budget
        return record


def describe_stop(stop: dict, validation_k: int = 50) -> str:
    """One line on why a training stopped, for reports and logs ("" for models trained before
    the record was kept)."""
    if not stop:
        return ""
    kept = f"kept epoch {stop['kept_epoch']}"
    if "best_metric" in stop:
        kept += f" (best validation hit rate@{validation_k} {stop['best_metric']:.4f})"
    if stop["reason"] == "patience":
        return (f"stopped early after epoch {stop['epochs']}: no better validation hit rate for "
                f"{stop['patience']} epochs; {kept}")
    if stop["reason"] == "time":
        where = (f"in epoch {stop['epochs']} (after {stop['last_epoch_batches']} batches)"
                 if "last_epoch_batches" in stop else f"after epoch {stop['epochs']}")
        budget = f"of {stop['time_budget']:g} s " if stop.get("time_budget") is not None else ""
        return f"stopped {where}: the time budget {budget}was spent; {kept}"
    return f"ran all {stop['epochs']} epochs; {kept}"


class Checkpoints:
    """The checkpoint of one training in ``directory`` (None: none is kept). With several
    processes, process 0 writes it with every process's random state."""

    def __init__(self, directory: Path | None, config: TowerConfig, replica: Replica) -> None:
        self.directory, self.config, self.replica = directory, config, replica

    def resume(self, model: torch.nn.Module, optimizer, generator: np.random.Generator,
               device: torch.device, average: WeightAverage | None = None) -> TrainingState:
        """The state after the last finished epoch of an earlier try, loaded into ``model``,
        ``optimizer``, ``average``, ``generator`` and torch's generator; a fresh state if there
        is none."""
        saved = self._read()
        if saved is None:
            return TrainingState()
        rank = self.replica.rank
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if average is not None:  # the settings match (``_read``), so the checkpoint has one
            average.load_state_dict(saved["average"])
        distributed = self.replica.distributed
        generator.bit_generator.state = saved["generators"][rank] if distributed else saved["generator"]
        torch_rng = saved["torch_rngs"][rank] if distributed else saved.get("torch_rng")
        if torch_rng is not None:  # dropout's masks go on as they would have (older checkpoints lack it)
            _set_torch_rng(torch_rng, device)
        elapsed = saved.get("elapsed", sum(record.get("seconds", 0.0) for record in saved["history"]))
        return TrainingState(epoch=saved["epoch"], history=saved["history"], best=saved["best"],
                             stopped=saved.get("stopped"), elapsed=float(elapsed))

    def save(self, state: TrainingState, model: torch.nn.Module, optimizer, generator: np.random.Generator,
             device: torch.device, average: WeightAverage | None = None) -> None:
        if self.directory is None:
            return
        saved = {"config": self.config.to_dict(), "epoch": state.epoch, "history": state.history,
                 "best": state.best, "stopped": state.stopped, "elapsed": state.elapsed,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if average is not None:
            saved["average"] = average.state_dict()
        if not self.replica.distributed:
            self._write({**saved, "generator": generator.bit_generator.state, "torch_rng": _torch_rng(device)})
            return
        generators: list = [None] * self.replica.world
        torch_rngs: list = [None] * self.replica.world
        dist.all_gather_object(generators, generator.bit_generator.state)
        dist.all_gather_object(torch_rngs, _torch_rng(device).cpu())
        if self.replica.rank == 0:
            self._write({**saved, "processes": self.replica.world, "generators": generators,
                         "torch_rngs": torch_rngs})
        dist.barrier()  # no process goes on (and could fail) before the checkpoint is complete

    def _write(self, saved: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / (CHECKPOINT + ".partial")
        torch.save(saved, partial)
        partial.replace(self.directory / CHECKPOINT)

    def _read(self) -> dict | None:
        """The checkpoint of an earlier run with the same settings and number of processes
        (``epochs`` may differ, to train further), if there is one and it is not past ``epochs``."""
        if self.directory is None or not (self.directory / CHECKPOINT).exists():
            return None
        path = self.directory / CHECKPOINT
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
            # never unpickled beyond tensors; an unreadable checkpoint only costs the epochs it held
            logging.getLogger(__name__).warning("ignoring unreadable checkpoint %s (%s); training from the start",
                                                path, str(error).splitlines()[0][:200])
            return None
        settings = {**self.config.to_dict(), "epochs": None, "time_budget": None}
        same = {**saved.get("config", {}), "epochs": None, "time_budget": None} == settings and \
            saved.get("processes", 1) == self.replica.world
        return saved if same and saved["epoch"] <= self.config.epochs else None


def _torch_rng(device: torch.device) -> torch.Tensor:
    """The state of the random generator dropout draws from on ``device``."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_torch_rng(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
    else:
        torch.set_rng_state(state.cpu())
