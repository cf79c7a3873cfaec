"""Every python block of docs/adhoc-queries.md runs, in order, against the real embedded Milvus."""

import pytest

from tests.conftest import run_doc_snippets, train_synthetic
from towerbridge import steps


@pytest.fixture(scope="module")
def served(milvus_uri, tmp_path_factory):
    """A version behind the default alias, as `towerbridge run` leaves it."""
    model_dir = train_synthetic(tmp_path_factory.mktemp("docs"), n_users=400, n_items=300, n_topics=10, seed=4)
    return steps.index_model(model_dir, milvus_uri, progress=False)


def test_every_snippet_runs(served, monkeypatch):
    printed = run_doc_snippets(monkeypatch)
    assert printed[0] == served.collection
    total, dramas = map(int, printed[2].split())
    assert total == 300 and 0 < dramas < 300
    assert "Drama" in printed[-2]
    assert printed[-1] == "{}"  # no item added or retired since the version was built
