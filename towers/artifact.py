"""A trained model on disk: a directory with a manifest, weights and vocabularies.

    manifest.json        ``ModelManifest``: format, model id, config, feature spec and encoders,
                         history, the prepared data and its summary, how training ran
    weights.pt           the state dict (loaded with ``weights_only=True``: no pickle)
    inputs.npz           encoded features per vocabulary index ("user/<column>", "item/<column>")
    user_vocab.parquet   user_id per vocabulary index (index = row + 1)
    item_vocab.parquet   item_id and training count per vocabulary index

The directory is written under a temporary name and renamed when complete, so a
crash never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from towerbridge import defaults
from towerbridge.errors import ArtifactError
from towerbridge.towers.features import Encoder, FeatureSpec
from towerbridge.towers.manifest import ModelManifest, TrainingRun
from towerbridge.towers.model import TwoTowerModel
from towerbridge.towers.trained import TrainedModel

FILES = ("manifest.json", "weights.pt", "inputs.npz", "user_vocab.parquet", "item_vocab.parquet")


def save(trained: TrainedModel, directory: Path, run: TrainingRun | None = None) -> Path:
    """Write the artifact to ``directory`` (which must not exist yet); return it. run: the
    data it was trained on and how training ran, for its manifest."""
    directory = Path(directory)
    if directory.exists():
        raise ArtifactError(f"{directory}: a model directory already exists there")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write(trained, directory, partial, run or TrainingRun())
    except OSError as error:  # disk full, read-only, a file where a directory should be: nothing half-written stays
        shutil.rmtree(partial, ignore_errors=True)
        raise ArtifactError(f"cannot write the model to {directory}: {error.strerror or error}") from None
    return directory


def _write(trained: TrainedModel, directory: Path, partial: Path, run: TrainingRun) -> None:
    partial.mkdir(parents=True)
    torch.save(trained.model.state_dict(), partial / "weights.pt")
    np.savez(partial / "inputs.npz",
             **{f"user/{name}": tensor.numpy() for name, tensor in trained.user_inputs.items()},
             **{f"item/{name}": tensor.numpy() for name, tensor in trained.item_inputs.items()})
    pq.write_table(pa.table({"user_id": trained.user_ids}), partial / "user_vocab.parquet")
    pq.write_table(pa.table({"item_id": trained.item_ids, "train_count": trained.item_counts}),
                   partial / "item_vocab.parquet")
    manifest = ModelManifest(
        model_id=directory.name, created_at=defaults.utc_now(), config=trained.config,
        features={"spec": trained.spec.to_dict(),
                  "user_encoders": [encoder.to_dict() for encoder in trained.user_encoders],
                  "item_encoders": [encoder.to_dict() for encoder in trained.item_encoders]},
        n_users=len(trained.user_ids), n_items=len(trained.item_ids), history=tuple(trained.history),
        prepared_dir=run.prepared_dir, data=run.data, train_seconds=run.seconds, training=run.training,
        stop=trained.stop, lineage=trained.lineage if trained.lineage is None or "train" not in run.data
        else replace(trained.lineage, interactions=int(run.data["train"])))
    (partial / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    partial.rename(directory)


def read_manifest(directory: Path) -> ModelManifest:
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: model directory not found")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory}: incomplete model artifact, missing {missing}")
    try:
        values = json.loads((directory / "manifest.json").read_text())
    except ValueError as error:
        raise ArtifactError(f"{directory / 'manifest.json'}: not valid JSON ({error})") from None
    return ModelManifest.from_dict(values, source=str(directory / "manifest.json"))


def load(directory: Path) -> TrainedModel:
    """Load a model artifact written by `save`."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config, features = manifest.config, manifest.features
    user_encoders = [Encoder.from_dict(values) for values in features["user_encoders"]]
    item_encoders = [Encoder.from_dict(values) for values in features["item_encoders"]]
    user_ids = pq.read_table(directory / "user_vocab.parquet").column("user_id").to_numpy()
    item_vocab = pq.read_table(directory / "item_vocab.parquet").to_pandas()
    model = TwoTowerModel(user_encoders, item_encoders, len(user_ids), len(item_vocab), config)
    try:
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        with np.load(directory / "inputs.npz", allow_pickle=False) as arrays:
            inputs = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
    except pickle.UnpicklingError:
        raise ArtifactError(f"{directory}: cannot load weights or inputs (weights.pt holds objects other than "
                            "tensors; refused without unpickling them: is it from a trusted source?)") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as error:
        raise ArtifactError(f"{directory}: cannot load weights or inputs ({str(error).splitlines()[0]})") from None
    model.eval()
    return TrainedModel(
        config=config, spec=FeatureSpec.from_dict(features["spec"]), model=model,
        user_ids=user_ids, item_ids=item_vocab["item_id"].to_numpy(),
        item_counts=item_vocab["train_count"].to_numpy(),
        user_encoders=user_encoders, item_encoders=item_encoders,
        user_inputs={key[5:]: value for key, value in inputs.items() if key.startswith("user/")},
        item_inputs={key[5:]: value for key, value in inputs.items() if key.startswith("item/")},
        history=list(manifest.history), stop=dict(manifest.stop), lineage=manifest.lineage,
    )
