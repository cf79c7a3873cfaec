"""A trained model on disk: a directory with a manifest, weights and vocabularies.

    manifest.json        format, model id, config, training history, data summary
    weights.pt           the state dict (loaded with ``weights_only=True``: no pickle)
    user_vocab.parquet   user_id per vocabulary index (index = row + 1)
    item_vocab.parquet   item_id and training count per vocabulary index

The directory is written under a temporary name and renamed when complete, so a
crash never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from towerbridge.errors import ArtifactError
from towers.config import TowerConfig
from towers.model import TwoTowerModel
from towers.train import TrainedModel

FORMAT = "towerbridge-model/1"
FILES = ("manifest.json", "weights.pt", "user_vocab.parquet", "item_vocab.parquet")


def save(trained: TrainedModel, directory: Path, extra: dict | None = None) -> Path:
    """Write the artifact to ``directory`` (which must not exist yet); return it."""
    directory = Path(directory)
    if directory.exists():
        raise ArtifactError(f"{directory}: a model directory already exists there")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(trained.model.state_dict(), partial / "weights.pt")
    pq.write_table(pa.table({"user_id": trained.user_ids}), partial / "user_vocab.parquet")
    pq.write_table(pa.table({"item_id": trained.item_ids, "train_count": trained.item_counts}),
                   partial / "item_vocab.parquet")
    manifest = {
        "format": FORMAT,
        "model_id": directory.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": trained.config.to_dict(),
        "n_users": len(trained.user_ids),
        "n_items": len(trained.item_ids),
        "history": trained.history,
        **(extra or {}),
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    partial.rename(directory)
    return directory


def read_manifest(directory: Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: model directory not found")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory}: incomplete model artifact, missing {missing}")
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except ValueError as error:
        raise ArtifactError(f"{directory / 'manifest.json'}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory / 'manifest.json'}: format {manifest.get('format')!r}, "
                            f"expected {FORMAT!r}")
    return manifest


def load(directory: Path) -> TrainedModel:
    """Load a model artifact written by `save`."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config = TowerConfig.from_dict(manifest["config"])
    user_ids = pq.read_table(directory / "user_vocab.parquet").column("user_id").to_numpy()
    item_vocab = pq.read_table(directory / "item_vocab.parquet").to_pandas()
    model = TwoTowerModel(len(user_ids), len(item_vocab), config)
    try:
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ArtifactError(f"{directory / 'weights.pt'}: cannot load weights ({str(error).splitlines()[0]})") from None
    model.eval()
    return TrainedModel(config, model, user_ids, item_vocab["item_id"].to_numpy(),
                        item_vocab["train_count"].to_numpy(), manifest.get("history", []))

