"""The train flow: prepare the dataset, train the towers, save the model artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from towerbridge import settings, steps
from towerbridge.data.options import DataOptions
from towerbridge.data.prepare import read_summary
from towerbridge.errors import ArtifactError, ConfigError, DataError
from towerbridge.options import TrainOptions
from towerbridge.results import ModelArtifact


@task(name="prepare-data")
def prepare_data(data: DataOptions, out_dir: str) -> str:
    return steps.prepare_data(data, out_dir)


def _worth_retrying(task, task_run, state) -> bool:
    """A crash or a killed process is retried (resuming after the last finished epoch); bad
    settings, data or a bad model to continue fail the same way again."""
    return not isinstance(state.result(raise_on_failure=False), (ConfigError, DataError, ArtifactError))


@task(name="train-towers", retries=1, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def train_towers(prepared_dir: str, models_dir: str, config: dict, checkpoint_dir: str, processes: int = 1,
                 parent_dir: str | None = None) -> str:
    # a retry resumes after the last finished epoch
    return steps.train_model(prepared_dir, models_dir, config, checkpoint_dir=checkpoint_dir, processes=processes,
                             parent_dir=parent_dir)


def checkpoint_name(parent_dir: str | None) -> str:
    """A training from scratch and one continuing a model never resume each other's checkpoint."""
    return "checkpoint" if parent_dir is None else f"checkpoint-from-{Path(parent_dir).name}"


@flow(name="train", log_prints=True)
def train(options: TrainOptions = TrainOptions(), run_dir: str | None = None) -> ModelArtifact:
    """Prepare the dataset ``options.data`` names (default: the built-in synthetic log):
    validate, filter, split; then train both towers. ``options.prepared_dir``: data prepared
    already (``towerbridge.data.prepare.prepare_data``; the command line does it before starting
    any server, so bad data fails in seconds), used instead. The query tower defaults to
    ``sequence``, or ``id`` for the ``tfrs`` protocol (``defaults.user_tower_for``); epochs,
    vector_dim and temperature to that tower's. ``options.continue_from``: a model to continue
    (continual training, ``towers/warm.py``) instead of random weights. ``run_dir``: where the prepared data and the
    checkpoints go (default: TOWERBRIDGE_HOME/runs/adhoc). Returns the ``ModelArtifact``.
    """
    run = Path(run_dir) if run_dir else settings.state_dir("runs") / "adhoc"
    prepared_dir = options.prepared_dir or prepare_data(options.data or DataOptions(), str(run / "data"))
    config = options.tower_config(read_summary(prepared_dir)["protocol"])
    model_dir = train_towers(prepared_dir, str(settings.state_dir("models")), config.to_dict(),
                             str(run / checkpoint_name(options.continue_from)), options.train_processes,
                             options.continue_from)
    return ModelArtifact(prepared_dir=prepared_dir, model_dir=model_dir)
