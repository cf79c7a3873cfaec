"""The train flow: prepare the dataset, train the towers, save the model artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from towerbridge import defaults, settings, steps
from towerbridge.data.options import DataOptions
from towerbridge.data.prepare import read_summary
from towerbridge.errors import ConfigError
from towerbridge.towers.config import TowerConfig


@task(name="prepare-data")
def prepare_data(data: DataOptions, out_dir: str) -> str:
    return steps.prepare_data(data, out_dir)


@task(name="train-towers", retries=1, retry_delay_seconds=5)
def train_towers(prepared_dir: str, models_dir: str, config: dict, checkpoint_dir: str, processes: int = 1) -> str:
    # a retry resumes after the last finished epoch
    return steps.train_model(prepared_dir, models_dir, config, checkpoint_dir=checkpoint_dir, processes=processes)


@flow(name="train", log_prints=True)
def train(
    data: DataOptions | None = None,
    run_dir: str | None = None,
    user_tower: str | None = None,
    epochs: int | None = None,
    vector_dim: int | None = None,
    temperature: float | None = None,
    use_features: bool = TowerConfig.use_features,
    early_stopping_patience: int = TowerConfig.early_stopping_patience,
    seed: int = TowerConfig.seed,
    prepared_dir: str | None = None,
    train_processes: int = 1,
) -> dict:
    """Prepare the dataset ``data`` names (default: the built-in synthetic log): validate,
    filter, split; then train both towers. ``prepared_dir``: data prepared already
    (``towerbridge.data.prepare.prepare_data``; the command line does it before starting any
    server, so bad data fails in seconds), used instead of ``data``.

    user_tower: ``sequence``, ``pooled`` or ``id`` (TowerConfig); default ``sequence``, or ``id``
    for the ``tfrs`` protocol (``defaults.user_tower_for``); epochs, vector_dim and temperature
    default to that tower's. train_processes: data-parallel training processes on this machine
    (PyTorch DDP, ``towerbridge.towers.distributed``). Returns ``{"prepared_dir", "model_dir"}``.
    """
    defaults.check_train_processes(train_processes)
    if data is not None and prepared_dir is not None:
        raise ConfigError("give the train flow data or prepared_dir, not both")
    run = Path(run_dir) if run_dir else settings.state_dir("runs") / "adhoc"
    prepared_dir = prepared_dir or prepare_data(data or DataOptions(), str(run / "data"))
    chosen = {name: value for name, value in (("epochs", epochs), ("vector_dim", vector_dim),
                                               ("temperature", temperature)) if value is not None}
    tower = defaults.user_tower_for(read_summary(prepared_dir)["protocol"], user_tower)
    config = TowerConfig.for_tower(tower, **chosen, use_features=use_features,
                                   early_stopping_patience=early_stopping_patience, seed=seed)
    model_dir = train_towers(prepared_dir, str(settings.state_dir("models")), config.to_dict(),
                             str(run / "checkpoint"), train_processes)
    return {"prepared_dir": prepared_dir, "model_dir": model_dir}
