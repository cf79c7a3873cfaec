"""Data-parallel training with PyTorch's DDP: several processes, each on its own shard of the users.

Every process reads the whole catalog (items, user features) and, from the training Parquet,
only the interactions of its range of users (a ``pyarrow.dataset`` filter); the ranges are
contiguous in user id and balanced by the work they hold. Item counts are summed over the
processes, the model starts from the same seed everywhere, and ``towers.train.fit`` wraps it in
``DistributedDataParallel``: all processes take the same number of steps and end with the same
weights; process 0 writes the checkpoints and the model.

Two ways to start the processes:

- towerbridge starts them on this machine (``train_processes``; ``--train-processes N`` on
  ``run`` and ``rebuild``, ``train_processes`` in the flows): ``torch.multiprocessing`` spawns
  N processes that meet on a free local port; gloo on CPUs, nccl on GPUs.
- ``torchrun`` starts them, on one machine or several::

      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
          -m towerbridge.towers.distributed PREPARED_DIR MODEL_DIR

  PREPARED_DIR (``towerbridge data check --out``, or a run's ``data``) and MODEL_DIR must be
  on storage every node sees; MODEL_DIR is a model artifact for ``towerbridge`` to index.
  ``--continue-from PARENT_DIR`` continues a trained model (``towers/warm.py``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from towerbridge.data.prepare import read_summary
from towerbridge.errors import ConfigError, DataError, TowerbridgeError, TrainingError
from towerbridge.towers import artifact
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import FeatureSpec, default_spec
from towerbridge.towers.manifest import TrainingRecord, TrainingRun
from towerbridge.towers.parallel import Replica
from towerbridge.towers.registry import query_tower
from towerbridge.towers.train import pick_device, read_parent, train
from towerbridge.towers.trained import TrainedModel

TIMEOUT = datetime.timedelta(minutes=30)  # how long a process waits for the others at a collective


def read_catalog(prepared_dir: str, config: TowerConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, FeatureSpec]:
    """The prepared data's items and users (None without a user table) and the features the
    towers read from them."""
    summary = read_summary(prepared_dir)
    items_file, users_file = Path(prepared_dir) / "items.parquet", Path(prepared_dir) / "users.parquet"
    if not items_file.is_file():
        raise DataError(f"{items_file}: not found; run the train flow (which prepares the data) first")
    items = pd.read_parquet(items_file)
    users = pd.read_parquet(users_file) if users_file.exists() else None
    spec = default_spec([] if users is None else list(users.columns), list(items.columns),
                        config.use_features, summary.get("feature_kinds"))
    return items, users, spec


def shard_bounds(user_ids: np.ndarray, processes: int, cap: int | None = None) -> tuple[np.ndarray, list]:
    """Every training user (sorted) and, per process, the first and last user of its range.

    user_ids: the training Parquet's ``user_id`` column. The ranges are contiguous and hold
    about the same work: each user's interactions, at most ``cap`` of them (a history tower
    reads a user's last ``history_length + 1`` items, whatever the history's length)."""
    users, counts = np.unique(user_ids, return_counts=True)
    if len(users) < processes:
        raise ConfigError(f"{processes} training processes need at least {processes} training users; "
                          f"the data has {len(users)}")
    work = np.cumsum(np.minimum(counts, cap) if cap else counts)
    cuts = np.searchsorted(work, work[-1] * np.arange(1, processes) / processes, side="left") + 1
    for i in range(len(cuts)):  # every range non-empty
        cuts[i] = min(max(cuts[i], (cuts[i - 1] if i else 0) + 1), len(users) - (processes - 1 - i))
    edges = np.concatenate([[0], cuts, [len(users)]])
    return users, [(users[edges[r]], users[edges[r + 1] - 1]) for r in range(processes)]


def read_shard(train_file: Path, first, last) -> pd.DataFrame:
    """The training interactions of users ``first`` to ``last`` (inclusive)."""
    user = pc.field("user_id")
    return ds.dataset(train_file, format="parquet").to_table(filter=(user >= first) & (user <= last)).to_pandas()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_rank(prepared_dir: str, config: TowerConfig, out_dir: str, checkpoint_dir: str | None = None,
               progress: bool = True, run: TrainingRun | None = None, parent_dir: str | None = None) -> TrainingRecord:
    """One process's part of a data-parallel training (``torch.distributed`` initialised).

    Process 0 writes the model artifact to ``out_dir`` (with ``run`` and a ``training``
    record: processes, backend, each process's shard and final weights' sha256) and returns
    that record; every process returns it."""
    rank, world = dist.get_rank(), dist.get_world_size()
    started = time.perf_counter()
    train_file = Path(prepared_dir) / "train.parquet"
    if not train_file.is_file():
        raise DataError(f"{train_file}: not found; run the train flow (which prepares the data) first")
    items, users, spec = read_catalog(prepared_dir, config)
    cap = query_tower(config.user_tower).interactions_read(config)
    user_ids, bounds = shard_bounds(pq.read_table(train_file, columns=["user_id"]).column(0).to_numpy(), world, cap)
    shard = read_shard(train_file, *bounds[rank])
    trained = train(shard, items, users, config, spec=spec, progress=progress and rank == 0,
                    checkpoint_dir=checkpoint_dir, replica=Replica(rank, world), user_ids=user_ids,
                    parent=read_parent(parent_dir))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"interactions": len(shard), "users": int(shard["user_id"].nunique()),
                                      "weights_sha256": weights_digest(trained.model)})
    record = TrainingRecord(processes=world, backend=dist.get_backend(), device=str(pick_device(config.device)),
                            shards=tuple(gathered))
    digests = {part["weights_sha256"] for part in gathered}
    if len(digests) != 1:
        raise TrainingError(f"the {world} training processes ended with different weights "
                            f"({len(digests)} different digests); the model was not saved")
    if rank == 0:
        artifact.save(trained, Path(out_dir), replace(run or TrainingRun(), training=record,
                                                      seconds=round(time.perf_counter() - started, 2)))
    dist.barrier()
    return record


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _backend(config: TowerConfig) -> str:
    return "nccl" if pick_device(config.device).type == "cuda" else "gloo"


def _spawned(rank: int, world: int, address: str, threads: int, prepared_dir: str, config: dict,
             out_dir: str, checkpoint_dir: str | None, progress: bool, parent_dir: str | None) -> None:
    """A process started by ``train_processes``."""
    tower_config = TowerConfig.from_dict(config)
    torch.set_num_threads(threads)
    if pick_device(tower_config.device).type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(_backend(tower_config), init_method=address, rank=rank, world_size=world,
                            timeout=TIMEOUT)
    try:
        train_rank(prepared_dir, tower_config, out_dir, checkpoint_dir, progress, parent_dir=parent_dir)
        _finished_mark(Path(out_dir).parent, rank).touch()
    finally:
        _leave_group()


def _finished_mark(scratch: Path, rank: int) -> Path:
    return scratch / f"finished-{rank}"


def all_finished(scratch: Path, processes: int) -> bool:
    """Whether every spawned process got past the last barrier (the model saved, its weights
    the same in every process): what happens to a process after that loses nothing."""
    return all(_finished_mark(scratch, rank).exists() for rank in range(processes))


def _leave_group() -> None:
    """Destroy the process group once nothing holds it: DDP's reducer sits in reference cycles,
    and a group freed later, at interpreter exit, tears its threads down in an undefined order."""
    gc.collect()
    dist.destroy_process_group()


def train_processes(prepared_dir: str, config: TowerConfig, processes: int, checkpoint_dir: str | None = None,
                    progress: bool = True, parent_dir: str | None = None) -> tuple[TrainedModel, TrainingRecord]:
    """Train on ``processes`` local processes (DDP); return the model and the training record.

    The machine's threads are shared out between the processes. If one process fails or
    dies, the others are stopped and one ``TrainingError`` says which and why; the
    checkpoint of the last finished epoch stays for the next try."""
    if _backend(config) == "nccl" and processes > torch.cuda.device_count():
        raise ConfigError(f"{processes} training processes on GPUs need {processes} GPUs (one each, for nccl); "
                          f"this machine has {torch.cuda.device_count()}")
    threads = max(1, torch.get_num_threads() // processes)
    with tempfile.TemporaryDirectory(prefix="towerbridge-ddp-") as scratch:
        out_dir = str(Path(scratch) / "model")
        try:
            mp.start_processes(_spawned, nprocs=processes, join=True, start_method="spawn", args=(
                processes, f"tcp://127.0.0.1:{_free_port()}", threads, prepared_dir, config.to_dict(),
                out_dir, checkpoint_dir, progress, parent_dir))
        except mp.ProcessRaisedException as error:
            raise TrainingError(f"training process {error.error_index} of {processes} failed: "
                                f"{_last_line(str(error))}; the other processes were stopped") from None
        except mp.ProcessExitedException as error:
            how = f"was killed by {error.signal_name}" if error.signal_name else f"exited with code {error.exit_code}"
            if not all_finished(Path(scratch), processes):
                raise TrainingError(f"training process {error.error_index} of {processes} {how}; the other "
                                    f"processes were stopped"
                                    + ("; a new try resumes after the last finished epoch" if checkpoint_dir else "")
                                    ) from None
            # every process had finished, compared its weights and passed the last barrier; the
            # model is saved: a process that dies on its way out (gloo's threads at interpreter
            # exit have aborted one) loses nothing
            warnings.warn(f"training process {error.error_index} of {processes} {how} after the training "
                          f"had finished; the model is complete", RuntimeWarning, stacklevel=2)
        record = artifact.read_manifest(Path(out_dir)).training
        return artifact.load(Path(out_dir)), record


def _last_line(traceback_text: str) -> str:
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


def main(argv: list[str] | None = None) -> int:
    """The entry point for ``torchrun``: one process of a data-parallel training."""
    parser = argparse.ArgumentParser(
        prog="python -m towerbridge.towers.distributed",
        description="One process of a data-parallel (DDP) training, started by torchrun, which sets RANK, "
                    "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Process 0 writes the model artifact.")
    parser.add_argument("prepared_dir", help="prepared data (items, users, train Parquet and summary.json), "
                                             "on storage every node sees")
    parser.add_argument("model_dir", help="where process 0 writes the model artifact (must not exist yet)")
    parser.add_argument("--config", default="{}", metavar="JSON",
                        help='model settings as JSON, e.g. \'{"epochs": 20}\' (default: the default tower\'s)')
    parser.add_argument("--checkpoint-dir", help="checkpoint after every epoch; a new start resumes from it")
    parser.add_argument("--continue-from", metavar="MODEL_DIR",
                        help="a trained model to continue (its weights are the start; the new model records it "
                             "as its parent), on storage every node sees")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("RANK is not set: start this module with torchrun (or use --train-processes N)")
    try:
        config = TowerConfig.from_dict(json.loads(args.config))
    except (ValueError, ConfigError) as error:
        parser.error(f"--config: {error}")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if pick_device(config.device).type == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(_backend(config), init_method="env://", timeout=TIMEOUT)
    try:
        train_rank(args.prepared_dir, config, args.model_dir, args.checkpoint_dir, not args.no_progress,
                   run=TrainingRun(prepared_dir=str(Path(args.prepared_dir).resolve()),
                                   data=read_summary(args.prepared_dir)), parent_dir=args.continue_from)
    except TowerbridgeError as error:
        print(f"error (process {dist.get_rank()}): {error}", file=sys.stderr)
        return 1
    finally:
        _leave_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
