"""The train flow: prepare the dataset, train the towers, save the model artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from towerbridge import settings, steps
from towers.config import TowerConfig


@task(name="prepare-data")
def prepare_data(dataset: str, data_dir: str | None, out_dir: str, protocol: str, spec_file: str | None,
                 filters: dict, split_options: dict, drop_unknown_items: bool) -> str:
    return steps.prepare_data(dataset, data_dir, out_dir, protocol, spec_file, filters, split_options,
                              drop_unknown_items)


@task(name="train-towers", retries=1, retry_delay_seconds=5)
def train_towers(prepared_dir: str, models_dir: str, config: dict, checkpoint_dir: str) -> str:
    # a retry resumes after the last finished epoch
    return steps.train_model(prepared_dir, models_dir, config, checkpoint_dir=checkpoint_dir)


@flow(name="train", log_prints=True)
def train(
    dataset: str = "synthetic",
    data_dir: str | None = None,
    protocol: str = "leave-last-out",
    spec_file: str | None = None,
    filters: dict | None = None,
    split_options: dict | None = None,
    drop_unknown_items: bool = False,
    run_dir: str | None = None,
    epochs: int = TowerConfig.epochs,
    vector_dim: int = TowerConfig.vector_dim,
    temperature: float = TowerConfig.temperature,
    use_features: bool = TowerConfig.use_features,
    early_stopping_patience: int = TowerConfig.early_stopping_patience,
    seed: int = TowerConfig.seed,
) -> dict:
    """Prepare ``dataset`` (or the tables of ``spec_file``): validate, apply ``filters``, split
    for ``protocol`` with ``split_options``; then train both towers.

    Returns ``{"prepared_dir", "model_dir"}``.
    """
    config = TowerConfig(epochs=epochs, vector_dim=vector_dim, temperature=temperature, use_features=use_features,
                         early_stopping_patience=early_stopping_patience, seed=seed)
    run = Path(run_dir) if run_dir else settings.state_dir("runs") / "adhoc"
    prepared_dir = prepare_data(dataset, data_dir, str(run / "data"), protocol, spec_file, filters or {},
                                split_options or {}, drop_unknown_items)
    model_dir = train_towers(prepared_dir, str(settings.state_dir("models")), config.to_dict(),
                             str(run / "checkpoint"))
    return {"prepared_dir": prepared_dir, "model_dir": model_dir}
