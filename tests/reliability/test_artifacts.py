"""A model artifact that is damaged, half-written or hostile is refused with a message naming
the file; nothing in it is ever unpickled."""

import pickle
import shutil
from pathlib import Path

import pytest

from tests.conftest import train_synthetic
from towerbridge.errors import ArtifactError
from towerbridge.towers import artifact


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return Path(train_synthetic(tmp_path_factory.mktemp("artifact"), n_users=200, n_items=150, n_topics=6, seed=3))


@pytest.fixture
def copy(model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


class Explodes:
    """Unpickling this would create the marker file: it must never happen."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_bomb_in_the_weights_is_refused_and_never_run(copy, tmp_path):
    Explodes.marker = tmp_path / "unpickled"
    (copy / "weights.pt").write_bytes(pickle.dumps({"weights": Explodes()}))
    with pytest.raises(ArtifactError, match=r"model: cannot load weights or inputs"):
        artifact.load(copy)
    assert not Explodes.marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes()[:100]), "cannot load weights or inputs"),
    (lambda d: (d / "manifest.json").write_text("{ not json"), "manifest.json: not valid JSON"),
    (lambda d: (d / "inputs.npz").unlink(), "incomplete model artifact, missing ['inputs.npz']"),
    (lambda d: (d / "manifest.json").write_text('{"format": "someone-else/1"}'),
     "format 'someone-else/1', expected 'towerbridge-model/2'"),
], ids=["truncated-weights", "manifest-not-json", "file-missing", "foreign-format"])
def test_a_damaged_artifact_names_what_is_wrong(copy, damage, message):
    damage(copy)
    with pytest.raises(ArtifactError) as error:
        artifact.load(copy)
    assert message in str(error.value) and str(copy) in str(error.value)


def test_a_half_written_artifact_never_looks_complete(model_dir, tmp_path):
    # save() writes into "<name>.partial" and renames at the end: a crash leaves only the partial.
    partial = tmp_path / "20260101-000000-abcdef.partial"
    shutil.copytree(model_dir, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="model directory not found"):
        artifact.load(tmp_path / "20260101-000000-abcdef")
