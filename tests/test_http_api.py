"""Every bash block of docs/http-api.md runs against the real embedded Milvus' REST API and
answers what towerbridge answers for the same question."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DOCS, write_synthetic
from towerbridge import analyst, steps
from towerbridge.data.options import DataOptions
from towerbridge.milvus.store import ItemStore
from towerbridge.towers import artifact
from towerbridge.towers.vectors import item_vectors

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")),
                                reason="docs/http-api.md's examples need curl and jq")

ALIAS = "http_api_test"
PAGE = DOCS / "http-api.md"
DRAMA = 'array_contains(genre_list, "Drama")'


def bash_sections(page=PAGE) -> dict[str, str]:
    """The bash blocks of a docs page, joined per ``## `` heading."""
    sections: dict[str, str] = {}
    heading = ""
    for title, block in re.findall(r"^## (.+?)$|^```bash\n(.*?)^```", page.read_text(), flags=re.M | re.S):
        if title:
            heading = title
        else:
            sections[heading] = sections.get(heading, "") + block
    return sections


SECTIONS = bash_sections()


def run_section(heading: str, cwd, **env: str) -> subprocess.CompletedProcess:
    """The page's ``heading`` section as a reader runs it after the Connect block's set-up."""
    script = "set -euo pipefail\n" + SECTIONS["Connect"] + SECTIONS[heading]
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def answer(heading: str, cwd, **env: str) -> str:
    """What the section prints; it must succeed."""
    result = run_section(heading, cwd, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_same_ranking(hits: list[dict], expected: list[dict]) -> None:
    """The REST API's ``hits`` rank as towerbridge's ``expected`` (one row longer): the same
    scores rank by rank, and the same item wherever its score ties with no neighbour's."""
    scores = [row["score"] for row in expected]
    assert [hit["distance"] for hit in hits] == pytest.approx(scores[:len(hits)], rel=1e-5)
    untied = [rank for rank in range(len(hits))
              if all(abs(scores[rank] - other) > 1e-4 * abs(scores[rank])
                     for other in scores[max(rank - 1, 0):rank] + scores[rank + 1:rank + 2])]
    assert len(untied) >= len(hits) // 2
    assert [hits[rank]["id"] for rank in untied] == [expected[rank]["item_id"] for rank in untied]


def test_every_section_with_examples_is_run_below():
    assert set(SECTIONS) == {"Connect", "Which version the alias serves", "Rows matching a filter", "One item by id",
                             "Items similar to an item", "Search with a query vector"}


@pytest.fixture(scope="module")
def built(milvus_uri, tmp_path_factory):
    root = tmp_path_factory.mktemp("http-api")
    (root / "data").mkdir()
    data = DataOptions("synthetic", write_synthetic(root / "data", n_users=300, n_items=250, n_topics=8, seed=11))
    prepared = steps.prepare_data(data, str(root / "prepared"))
    # with the popularity prior in the vectors' last slot, so that the page's zeroing of it matters
    model_dir = steps.train_model(prepared, str(root / "models"), {"epochs": 1, "logq_correction": True},
                                  progress=False)
    version = steps.index_model(model_dir, milvus_uri, alias=ALIAS, progress=False)
    known = pd.concat([pd.read_parquet(f"{prepared}/{part}.parquet") for part in ("train", "held_out")])
    with ItemStore(milvus_uri) as store:
        yield {"store": store, "version": version, "model": artifact.load(model_dir), "known": known,
               "items": pd.read_parquet(f"{prepared}/items.parquet"),
               "env": {"MILVUS_HTTP": milvus_uri, "ALIAS": ALIAS, "ITEM": "7"}}


def test_the_served_version_is_found_by_its_description(built, tmp_path):
    served, record = answer("Which version the alias serves", tmp_path, **built["env"]).splitlines()
    assert served == built["version"].collection
    assert json.loads(record)["model_id"] == built["version"].model_id


def test_a_filter_returns_the_rows_the_analyst_query_returns(built, tmp_path):
    rows = json.loads(answer("Rows matching a filter", tmp_path, **built["env"]))
    expected = analyst.query(built["store"], ALIAS, DRAMA, limit=None)
    assert 0 < len(expected) < len(built["items"])
    assert sorted(rows, key=lambda row: row["item_id"]) == sorted(expected, key=lambda row: row["item_id"])
    assert all("Drama" in row["genres"].split("|") for row in rows)


def test_one_item_by_id(built, tmp_path):
    items = built["items"].set_index("item_id")
    assert json.loads(answer("One item by id", tmp_path, **built["env"])) == [
        {"item_id": 7, "title": items.loc[7, "title"], "genres": items.loc[7, "genres"]}]


def test_similar_items_rank_by_the_cosine_of_their_embeddings(built, tmp_path):
    """The exact ranking ``towerbridge similar`` computes (a version this small has no index
    files, so Milvus searches it exactly too), and the scores the page explains."""
    hits = json.loads(answer("Items similar to an item", tmp_path, **built["env"]))
    ids, vectors = item_vectors(built["model"])
    embeddings = vectors[:, :-1]
    item = embeddings[list(ids).index(7)]
    products = embeddings @ item
    order = [row for row in np.argsort(-products) if ids[row] != 7][:11]
    assert len(hits) == 10 and 7 not in {hit["id"] for hit in hits}
    assert_same_ranking(hits, [{"item_id": ids[row], "score": products[row]} for row in order])
    temperature = built["model"].config.temperature
    cosines = embeddings[order[:10]] @ item / np.linalg.norm(embeddings[order[:10]], axis=1) / np.linalg.norm(item)
    assert [hit["distance"] * temperature**2 for hit in hits] == pytest.approx(cosines, abs=1e-5)


def test_a_query_vector_from_a_file_is_searched_as_recommend_does(built, tmp_path):
    model, user = built["model"], built["model"].user_ids[5]
    query = steps.user_queries(model, np.array([user]), built["known"])[0]
    (tmp_path / "query.json").write_text(json.dumps(query.tolist()))
    hits = json.loads(answer("Search with a query vector", tmp_path, **built["env"]))
    assert len(hits) == 10
    assert_same_ranking(hits, analyst.recommend(built["store"], ALIAS, str(user), k=11, include_seen=True))


def test_an_error_answer_fails_the_call_with_milvus_message(built, tmp_path):
    result = run_section("Rows matching a filter", tmp_path, **{**built["env"], "ALIAS": "no_such_alias"})
    assert result.returncode != 0 and result.stdout == ""
    assert "collection not found" in result.stderr
