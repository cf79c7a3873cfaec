"""Every python block of docs/adhoc-queries.md runs, in order, against the real embedded Milvus."""

import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import train_synthetic
from towerbridge import steps

DOC = Path(__file__).resolve().parents[1] / "docs" / "adhoc-queries.md"


@pytest.fixture(scope="module")
def served(milvus_uri, tmp_path_factory):
    """A version behind the default alias, as `towerbridge run` leaves it."""
    model_dir = train_synthetic(tmp_path_factory.mktemp("docs"), n_users=400, n_items=300, n_topics=10, seed=4)
    return steps.index_model(model_dir, milvus_uri, progress=False)


def test_every_snippet_runs(served, milvus_uri, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.delenv("MILVUS_URI", raising=False)  # the first block finds the embedded server itself
    # ... with the `towerbridge` command, installed beside this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 (our own documentation)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == served["collection"]
    total, dramas = map(int, printed[2].split())
    assert total == 300 and 0 < dramas < 300
    assert "Drama" in printed[-1]
