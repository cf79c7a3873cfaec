"""The model manifest: one writer, one reader, older manifests still load."""

from __future__ import annotations

import json

import pytest

from towerbridge.errors import ArtifactError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.manifest import FORMAT, ModelManifest, TrainingRecord

FEATURES = {"spec": {"user": [], "item": []}, "user_encoders": [], "item_encoders": []}


def written_before_the_record() -> dict:
    """A manifest as the writer before ``ModelManifest`` wrote it: the keys of the artifact,
    then those the train step added (an id-tower model from before the history towers has no
    ``user_tower`` in its config)."""
    return {
        "format": "towerbridge-model/2", "model_id": "m1", "created_at": "2026-11-30T10:00:00Z",
        "config": {"vector_dim": 32, "epochs": 8, "batch_size": 1024, "learning_rate": 0.01,
                   "logq_correction": True},
        "features": FEATURES, "n_users": 943, "n_items": 1682,
        "history": [{"epoch": 1, "loss_per_example": 6.1, "seconds": 2.0, "examples_per_s": 40000.0},
                    {"epoch": 2, "loss_per_example": 5.9, "seconds": 2.0, "examples_per_s": 50000.0}],
        "prepared_dir": "/data/prepared", "train_seconds": 4.2,
        "data": {"dataset": "movielens-100k", "protocol": "tfrs", "train": 80000},
    }


def test_a_manifest_written_before_the_record_loads_with_its_defaults():
    manifest = ModelManifest.from_dict(written_before_the_record())
    assert manifest.config.user_tower == "id" and manifest.config.vector_dim == 32
    assert not manifest.config.gated_blocks and manifest.config.feed_forward_mult == 1
    assert manifest.training == TrainingRecord(processes=1)
    assert (manifest.dataset, manifest.protocol, manifest.id_type) == ("movielens-100k", "tfrs", "int64")
    assert manifest.train_interactions == 80000 and manifest.train_seconds == 4.2
    assert manifest.epochs == 2 and manifest.mean_examples_per_s() == 45000.0


def test_a_sequence_model_written_before_the_learned_temperature_keeps_its_fixed_one():
    # a default sequence model written before the setting: gated blocks recorded, no learn_temperature key
    values = {**written_before_the_record(), "config": {"user_tower": "sequence", "gated_blocks": True,
                                                        "feed_forward_mult": 4, "temperature": 0.1}}
    config = ModelManifest.from_dict(values).config
    assert config.gated_blocks and config.feed_forward_mult == 4
    assert config.learn_temperature is False and config.temperature == 0.1
    # what is trained today: the sequence tower learns it by default, the id tower does not
    assert TowerConfig().learn_temperature and not TowerConfig(user_tower="id").learn_temperature
    assert ModelManifest.from_dict({**values, "config": TowerConfig().to_dict()}).config.learn_temperature


def test_what_is_written_reads_back_equal():
    manifest = ModelManifest(
        model_id="m2", created_at="2026-12-05T10:00:00Z", config=TowerConfig(epochs=3), features=FEATURES,
        n_users=10, n_items=20, history=({"epoch": 1, "examples_per_s": 10.0},), prepared_dir="/p",
        data={"dataset": "synthetic", "id_type": "string"}, train_seconds=1.5,
        training=TrainingRecord(processes=2, backend="gloo", device="cpu",
                                shards=({"interactions": 5, "users": 2, "weights_sha256": "ab"},)))
    record = json.loads(json.dumps(manifest.to_dict()))
    assert record["format"] == FORMAT and record["config"]["user_tower"] == "sequence"
    assert ModelManifest.from_dict(record) == manifest


def test_an_unknown_format_or_a_missing_key_is_refused_with_the_file_named():
    expected = r"m/manifest.json: format 'towerbridge-model/9', expected 'towerbridge-model/2'"
    with pytest.raises(ArtifactError, match=expected):
        ModelManifest.from_dict({**written_before_the_record(), "format": "towerbridge-model/9"},
                                source="m/manifest.json")
    incomplete = written_before_the_record()
    del incomplete["n_items"]
    with pytest.raises(ArtifactError, match="m/manifest.json: the manifest lacks 'n_items'"):
        ModelManifest.from_dict(incomplete, source="m/manifest.json")
