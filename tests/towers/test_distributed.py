"""Data-parallel training with PyTorch DDP: real processes (spawned by towerbridge or by
torchrun), gloo on this CPU; each process on its own shard of the users."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_synthetic
from towerbridge import steps
from towerbridge.data.options import DataOptions
from towerbridge.errors import ConfigError, TrainingError
from towerbridge.towers import artifact
from towerbridge.towers.distributed import all_finished, read_shard, shard_bounds, weights_digest
from towerbridge.towers.manifest import TrainingRecord

SMALL = {"n_users": 1500, "n_items": 800, "mean_interactions": 20.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ddp")
    (root / "data").mkdir()
    return steps.prepare_data(DataOptions("synthetic", write_synthetic(root / "data", **SMALL)), str(root / "prepared"))


def test_shards_are_contiguous_disjoint_and_balanced():
    rng = np.random.default_rng(0)
    column = rng.choice(np.arange(10, 1010), size=50_000, p=rng.dirichlet(np.ones(1000)))
    users, bounds = shard_bounds(column, 3)
    assert np.array_equal(users, np.unique(column))
    shards = [users[(users >= first) & (users <= last)] for first, last in bounds]
    assert np.array_equal(np.concatenate(shards), users)  # every user once, in order
    work = [np.isin(column, shard).sum() for shard in shards]
    assert max(work) < 1.05 * min(work)
    # a history tower reads at most history_length + 1 items of a user: the cap balances that work
    _, capped = shard_bounds(column, 3, cap=10)
    assert capped != bounds


def test_every_process_gets_a_user_or_a_clear_error():
    _, bounds = shard_bounds(np.array([5, 5, 5, 5, 6, 7]), 3)  # one heavy user
    assert bounds == [(5, 5), (6, 6), (7, 7)]
    with pytest.raises(ConfigError, match="3 training processes need at least 3 training users; the data has 2"):
        shard_bounds(np.array([1, 2, 2]), 3)


def test_a_shard_is_its_users_rows(prepared):
    train_file = Path(prepared) / "train.parquet"
    whole = pd.read_parquet(train_file)
    first, last = np.sort(whole["user_id"].unique())[[10, 99]]
    shard = read_shard(train_file, first, last)
    expected = whole[(whole["user_id"] >= first) & (whole["user_id"] <= last)]
    assert len(shard) == len(expected) > 0
    assert shard.reset_index(drop=True).equals(expected.reset_index(drop=True))


def test_two_processes_end_with_identical_weights(prepared, tmp_path):
    one = steps.train_model(prepared, str(tmp_path / "one"), {"epochs": 2}, progress=False)
    two = steps.train_model(prepared, str(tmp_path / "two"), {"epochs": 2}, progress=False, processes=2)
    manifest = artifact.read_manifest(Path(two))
    training = manifest.training
    assert training.processes == 2 and training.backend == "gloo"
    digests = [shard["weights_sha256"] for shard in training.shards]
    assert digests[0] == digests[1] == weights_digest(artifact.load(Path(two)).model)
    # the shards are the training data, split by user
    train = pq.read_table(Path(prepared) / "train.parquet", columns=["user_id"]).column(0).to_numpy()
    assert sum(shard["interactions"] for shard in training.shards) == len(train)
    assert sum(shard["users"] for shard in training.shards) == len(np.unique(train))
    assert min(shard["interactions"] for shard in training.shards) > 0.4 * len(train)
    # the same model as one process trains, up to the batches' composition: the summed gradient
    # of the global batch, the same vocabularies and item counts
    single = artifact.load(Path(one))
    double = artifact.load(Path(two))
    assert np.array_equal(single.user_ids, double.user_ids)
    assert np.array_equal(single.item_counts, double.item_counts)
    assert artifact.read_manifest(Path(one)).training == TrainingRecord(processes=1)
    losses = [[epoch["loss_per_example"] for epoch in artifact.read_manifest(Path(d)).history] for d in (one, two)]
    assert losses[1][1] < losses[1][0]
    assert losses[1] == pytest.approx(losses[0], rel=0.03)


def _spawned_children() -> list[int]:
    """This process's children started by torch.multiprocessing (spawn)."""
    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # a thread or process that ended meanwhile
            return b""

    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(pid) for pid in read(task / "children").split()]
    return sorted(pid for pid in pids if b"spawn_main" in read(Path(f"/proc/{pid}/cmdline")))


def test_a_process_that_dies_stops_the_others_with_one_message(prepared, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    outcome: dict = {}

    def train() -> None:
        try:
            steps.train_model(prepared, str(tmp_path / "models"), {"epochs": 30}, progress=False,
                              checkpoint_dir=str(checkpoint), processes=2)
        except BaseException as error:  # noqa: BLE001  (the test reads it)
            outcome["error"] = error

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 240
    while not (checkpoint / "checkpoint.pt").exists():  # one epoch done: both processes are at work
        assert time.monotonic() < deadline and thread.is_alive(), "training did not reach its first checkpoint"
        time.sleep(0.2)
    children = _spawned_children()
    assert len(children) == 2
    os.kill(children[-1], signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, TrainingError)
    assert str(error).startswith("training process ")
    assert "of 2 was killed by SIGKILL; the other processes were stopped; " \
           "a new try resumes after the last finished epoch" in str(error)
    assert _spawned_children() == []  # none is left waiting for the dead one
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # no model written
    # the checkpoint of the last finished epoch stays, and a new try resumes from it
    import torch

    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)
    assert state["processes"] == 2 and len(state["generators"]) == 2
    done = state["epoch"]
    model = steps.train_model(prepared, str(tmp_path / "models"), {"epochs": done + 1}, progress=False,
                              checkpoint_dir=str(checkpoint), processes=2)
    history = artifact.read_manifest(Path(model)).history
    assert len(history) == done + 1
    assert list(history[:done]) == state["history"]


def test_only_a_process_dying_after_every_process_finished_is_forgiven(tmp_path):
    # each spawned process marks that it passed the last barrier (model saved, weights compared)
    assert not all_finished(tmp_path, 2)
    (tmp_path / "finished-1").touch()
    assert not all_finished(tmp_path, 2)  # process 0 had not: the error stands (test above)
    (tmp_path / "finished-0").touch()
    assert all_finished(tmp_path, 2) and not all_finished(tmp_path, 3)


def test_torchrun_starts_the_processes(prepared, tmp_path):
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "towerbridge.towers.distributed", prepared, str(out), "--config", json.dumps({"epochs": 1}),
         "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = artifact.read_manifest(out)
    assert manifest.training.processes == 2
    assert manifest.dataset == "synthetic"
    assert {shard["weights_sha256"] for shard in manifest.training.shards} == \
        {weights_digest(artifact.load(out).model)}
    # and a continued training: the first model is the second's parent
    again = tmp_path / "continued"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "towerbridge.towers.distributed", prepared, str(again), "--config", json.dumps({"epochs": 1}),
         "--no-progress", "--continue-from", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lineage = artifact.read_manifest(again).lineage
    assert (lineage.parent_id, lineage.parent_dir, lineage.new_items) == (manifest.model_id, str(out), 0)


def test_the_module_refuses_to_run_without_torchrun(prepared, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE")}
    result = subprocess.run([sys.executable, "-m", "towerbridge.towers.distributed", prepared, str(tmp_path / "m")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "RANK is not set: start this module with torchrun (or use --train-processes N)" in result.stderr


def test_sparse_embedding_tables_are_summed_over_the_processes(prepared, tmp_path):
    # the id tower with sparse gradients (as tables above 100k rows get): their rows are summed
    # with dense all-gathers, not gloo's sparse all-reduce (BENCHMARKS.md).
    # The processes' users are disjoint, so equal weights mean each applied the other's rows.
    config = {"epochs": 2, "user_tower": "id", "sparse_embeddings": "always"}
    model = steps.train_model(prepared, str(tmp_path), config, progress=False, processes=2)
    manifest = artifact.read_manifest(Path(model))
    assert {shard["weights_sha256"] for shard in manifest.training.shards} == \
        {weights_digest(artifact.load(Path(model)).model)}
    history = manifest.history
    assert history[1]["loss_per_example"] < history[0]["loss_per_example"]


def test_a_time_budget_stops_every_process_at_the_same_step(prepared, tmp_path):
    # the budget is spent in the middle of an epoch; the processes agree on the step to stop at
    model = steps.train_model(prepared, str(tmp_path), {"epochs": 200, "time_budget": 3.0}, progress=False,
                              processes=2)
    manifest = artifact.read_manifest(Path(model))
    assert manifest.stop["reason"] == "time" and manifest.stop["epochs"] < 200
    assert {shard["weights_sha256"] for shard in manifest.training.shards} == \
        {weights_digest(artifact.load(Path(model)).model)}
