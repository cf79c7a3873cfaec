"""Analysts' queries (recommend, similar, query, collections) against the real embedded Milvus,
checked against brute force over the same vectors, through the functions and the command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import towerbridge
from tests.conftest import train_synthetic
from towerbridge import analyst, steps
from towerbridge.errors import CollectionError, ConfigError, DataError
from towerbridge.milvus import server
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.store import ItemStore
from towerbridge.towers import artifact
from towerbridge.towers.vectors import item_vectors

ALIAS = "analyst_test"
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def built(milvus_uri, tmp_path_factory):
    model_dir = train_synthetic(tmp_path_factory.mktemp("analyst"), epochs=3, n_users=800, n_items=700, n_topics=16,
                                seed=21)
    prepared = artifact.read_manifest(model_dir).prepared_dir
    items = pd.read_parquet(f"{prepared}/items.parquet")
    result = steps.index_model(model_dir, milvus_uri, alias=ALIAS, progress=False)
    store = ItemStore(milvus_uri)
    # what recommend reads a user's latest items from, by default: the model's data, both parts
    known = pd.concat([pd.read_parquet(f"{prepared}/{part}.parquet") for part in ("train", "held_out")])
    yield {"store": store, "model": artifact.load(model_dir), "items": items, "collection": result.collection,
           "train": pd.read_parquet(f"{prepared}/train.parquet"), "known": known}
    store.close()


def test_recommend_matches_brute_force_and_leaves_out_seen_items(built):
    model, known, store = built["model"], built["known"], built["store"]
    assert model.config.user_tower == "sequence"  # the default
    ids, vectors = item_vectors(model)
    overlaps = []
    for user in model.user_ids[:40]:
        seen = set(known.loc[known["user_id"] == user, "item_id"])
        scores = steps.user_queries(model, np.array([user]), known)[0] @ vectors.T
        exact = [i for i in ids[np.argsort(-scores)] if i not in seen][:10]
        got = analyst.recommend(store, ALIAS, str(user), k=10)
        assert len(got) == 10 and not seen & {row["item_id"] for row in got}
        assert all(a["score"] >= b["score"] for a, b in zip(got, got[1:]))
        overlaps.append(len(set(exact) & {row["item_id"] for row in got}) / 10)
    assert np.mean(overlaps) >= 0.95  # the index was tuned to recall 0.95 at 100
    with_seen = analyst.recommend(store, ALIAS, str(model.user_ids[0]), k=5, include_seen=True)
    assert len(with_seen) == 5


def test_recommend_with_a_filter_keeps_only_matching_items(built):
    got = analyst.recommend(built["store"], ALIAS, str(built["model"].user_ids[3]), k=5,
                            expression='array_contains(genre_list, "Drama")')
    assert got and all("Drama" in row["genres"].split("|") for row in got)


def test_similar_matches_brute_force_over_embeddings(built):
    model, store = built["model"], built["store"]
    ids, vectors = item_vectors(model)
    embeddings = vectors[:, :-1]
    overlaps = []
    for row in range(0, 200, 10):
        scores = embeddings @ embeddings[row]
        exact = [i for i in ids[np.argsort(-scores)] if i != ids[row]][:10]
        got = analyst.similar(store, ALIAS, str(ids[row]), k=10)
        assert ids[row] not in {r["item_id"] for r in got}
        overlaps.append(len(set(exact) & {r["item_id"] for r in got}) / 10)
    assert np.mean(overlaps) >= 0.9


def test_similar_reports_the_exact_cosine_of_the_trained_embeddings(built):
    model, store = built["model"], built["store"]
    ids, vectors = item_vectors(model)
    unit = vectors[:, :-1] / np.linalg.norm(vectors[:, :-1], axis=1, keepdims=True)
    row_of = {item: row for row, item in enumerate(ids)}
    for row in (0, 17, 350):
        got = analyst.similar(store, ALIAS, str(ids[row]), k=10)
        exact = [float(unit[row_of[hit["item_id"]]] @ unit[row]) for hit in got]
        assert [hit["cosine"] for hit in got] == pytest.approx(exact, abs=1e-5)
        assert all(-1 <= a["cosine"] <= 1 and a["cosine"] >= b["cosine"] for a, b in zip(got, got[1:]))
        assert max(unit[row_of[item]] @ unit[row] for item in ids if item != ids[row]) == pytest.approx(
            got[0]["cosine"], abs=0.02)  # the nearest item found is (about) the nearest there is


def test_the_python_api_answers_as_data_frames(built):
    """towerbridge.connect() finds the session's embedded server as the commands do, answers
    with the same rows as the functions, and leaves running a server it did not start."""
    store, user = built["store"], str(built["model"].user_ids[7])
    with towerbridge.connect(alias=ALIAS) as tb:
        recommended = tb.recommend(user=user, k=5)
        assert list(recommended.columns) == ["rank", "item_id", "score", "title", "genres"]
        assert recommended["rank"].tolist() == [1, 2, 3, 4, 5]
        assert recommended.drop(columns="rank").to_dict("records") == analyst.recommend(store, ALIAS, user, k=5)
        assert "inner product" in recommended.attrs["score"]
        similar = tb.similar(item=7, k=4)
        assert list(similar.columns) == ["rank", "item_id", "cosine", "title", "genres"]
        assert similar.drop(columns="rank").to_dict("records") == analyst.similar(store, ALIAS, "7", k=4)
        westerns = tb.query('array_contains(genre_list, "Western")', limit=None)
        items = built["items"]
        assert sorted(westerns["item_id"]) == sorted(
            items.loc[items["genres"].str.split("|").map(lambda g: "Western" in g), "item_id"])
        versions = tb.versions()
        assert versions.loc[versions["serving"], "collection"].tolist() == [built["collection"]]
        assert tb.query("item_id in [3]", collection=built["collection"])["item_id"].tolist() == [3]
    assert server.running() is not None


def test_the_analyst_notebook_runs_against_the_real_server(built, tmp_path):
    """docs/analyst-notebook.ipynb, executed in a real kernel with this module's version: its
    answers are the functions' answers, and the popularity plot is drawn."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(DOCS / "analyst-notebook.ipynb", as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    user = int(built["model"].user_ids[9])
    parameters.source += f"\nALIAS = {ALIAS!r}\nUSER = {user}\nSAMPLE_USERS = 30\n"
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def shown(fragment: str) -> str:
        cell = next(cell for cell in notebook.cells if cell.cell_type == "code" and fragment in cell.source)
        return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                       for output in cell.outputs)

    recommended = analyst.recommend(built["store"], ALIAS, str(user), k=10)
    assert all(row["title"] in shown("tb.recommend(user=USER, k=10)\n") for row in recommended)
    similar = analyst.similar(built["store"], ALIAS, str(recommended[0]["item_id"]), k=10)
    assert all(row["title"] in shown("tb.similar(item=ITEM") for row in similar)
    plot = next(cell for cell in notebook.cells if "plt.show()" in cell.source)
    assert any("image/png" in output.get("data", {}) for output in plot.outputs)
    assert "recommended" in shown("plt.show()") and "interactions" in shown("plt.show()")


def test_query_returns_exactly_the_matching_rows(built):
    items = built["items"]
    rows = analyst.query(built["store"], ALIAS, 'array_contains(genre_list, "Western")', limit=None)
    expected = items[items["genres"].str.split("|").map(lambda g: "Western" in g)]
    assert sorted(r["item_id"] for r in rows) == sorted(expected["item_id"])
    every = built["store"].rows(built["collection"], "item_id >= 0", ["item_id"], batch_size=100)
    assert sorted(r["item_id"] for r in every) == list(range(1, 701))  # seven batches, nothing lost or repeated
    by_id = analyst.query(built["store"], ALIAS, "item_id in [1, 2, 3]", fields=["item_id", "title"])
    assert {r["item_id"]: r["title"] for r in by_id} == items.set_index("item_id").loc[[1, 2, 3], "title"].to_dict()


def test_collections_lists_the_served_version(built):
    listed = analyst.versions(built["store"], ALIAS)
    serving = [v for v in listed if v["serving"]]
    assert len(serving) == 1 and serving[0]["collection"] == built["collection"]
    assert serving[0]["rows"] == 700 and serving[0]["index_type"] == "IVF_PQ" and serving[0]["complete"]


@pytest.mark.parametrize("call, error, message", [
    (lambda s: analyst.recommend(s, ALIAS, "999999"), DataError, "user 999999 has no interactions in the data of"),
    (lambda s: analyst.recommend(s, ALIAS, "abc"), DataError, "user id 'abc': this collection's ids are integers"),
    (lambda s: analyst.similar(s, ALIAS, "999999"), DataError, "item 999999 is not in collection"),
    (lambda s: analyst.similar(s, ALIAS, "5 or true"), DataError, "item id '5 or true': this collection's ids are"),
    (lambda s: analyst.query(s, ALIAS, "item_id >>> 3"), ConfigError, "invalid filter 'item_id >>> 3'"),
    (lambda s: analyst.query(s, ALIAS, "item_id > 3", fields=["colour"]), ConfigError, r"unknown field\(s\)"),
    (lambda s: analyst.recommend(s, "no_such_alias", "1"), CollectionError,
     "no collection or alias named 'no_such_alias'"),
])
def test_bad_questions_are_explained(built, call, error, message):
    with pytest.raises(error, match=message):
        call(built["store"])


def test_a_question_is_asked_again_only_after_a_swap_or_an_internal_error(built):
    """The rules of asking again, on the real alias: a question whose version stopped serving
    is asked of the new one; an internal server error is asked again after a pause; any
    other error is final; never more than ASKED_AT_MOST times."""
    store, asked = built["store"], []

    def once_failing(message, swap_to=None):
        @analyst._again_if_swapped
        def question(store, name):
            asked.append(store.resolve(name))
            if len(asked) == 1:
                if swap_to:
                    store.client.alter_alias(swap_to, ALIAS)
                raise CollectionError(message)
            return "answered"
        return question

    other = store.create_version(ALIAS, "retrytest", 33, VersionRecord(model_id="retrytest"))
    try:
        assert once_failing("gone", swap_to=other)(store, ALIAS) == "answered"
        assert asked == [built["collection"], other]
        store.client.alter_alias(built["collection"], ALIAS)
        asked.clear()
        assert once_failing("service internal error: UnknownError")(store, ALIAS) == "answered"
        assert asked == [built["collection"]] * 2
        asked.clear()
        with pytest.raises(CollectionError, match="refused for a reason"):
            once_failing("refused for a reason")(store, ALIAS)
        assert len(asked) == 1

        @analyst._again_if_swapped
        def always_internal(store, name):
            asked.append(name)
            raise CollectionError("service internal error")
        asked.clear()
        with pytest.raises(CollectionError):
            always_internal(store, ALIAS)
        assert len(asked) == analyst.ASKED_AT_MOST
    finally:
        store.client.alter_alias(built["collection"], ALIAS)
        store.drop(other)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "towerbridge.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_the_commands_print_json(built):
    user, item = str(built["model"].user_ids[5]), "7"
    recommended = json.loads(cli("recommend", "--user", user, "-k", "3", "--alias", ALIAS, "--json").stdout)
    assert [r["rank"] for r in recommended] == [1, 2, 3] and {"item_id", "score", "title", "genres"} <= set(
        recommended[0])
    assert recommended == [{"rank": i + 1, **r} for i, r in
                           enumerate(analyst.recommend(built["store"], ALIAS, user, k=3))]
    similar = json.loads(cli("similar", "--item", item, "-k", "4", "--alias", ALIAS, "--json").stdout)
    assert len(similar) == 4 and all(r["item_id"] != 7 for r in similar)
    rows = json.loads(cli("query", "--filter", "item_id in [5, 6]", "--alias", ALIAS, "--json").stdout)
    assert sorted(r["item_id"] for r in rows) == [5, 6]
    listed = json.loads(cli("collections", "--alias", ALIAS, "--json").stdout)
    assert listed[0]["serving"] is True


@pytest.mark.parametrize("args, message", [
    (["recommend", "--user", "999999", "--alias", ALIAS], "user 999999 has no interactions in the data of model"),
    (["similar", "--item", "999999", "--alias", ALIAS], "item 999999 is not in collection"),
    (["query", "--filter", "item_id >>> 3", "--alias", ALIAS], "invalid filter 'item_id >>> 3'"),
    (["recommend", "--user", "1", "--collection", "nope_v1"], "no collection or alias named 'nope_v1'"),
    (["recommend", "--user", "1", "-k", "0"], "-k must be between 1 and 16384"),
])
def test_command_errors_are_one_line(built, args, message):
    result = cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_unreachable_milvus_for_a_query():
    result = cli("collections", env={"MILVUS_URI": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.strip().startswith("towerbridge: error: cannot reach Milvus at http://127.0.0.1:9")
