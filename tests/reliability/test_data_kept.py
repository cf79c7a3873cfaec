"""Reading a version never costs its files.

Each command and documented snippet that reads stored fields (vectors and scalars) reads,
the embedded server stops and starts again, and the same question is asked again: the
answers are equal, and every file of every version under the server's storage directory
(binlogs, statistics, index files) is still there, byte for byte. A version whose files
are gone anyway is reported as damaged, and the next rebuild replaces it.

The server is this module's own (a TOWERBRIDGE_HOME of its own, sharing the install), so
it can be stopped and started without disturbing the session's."""

import hashlib
import json

import pytest

from tests.conftest import own_server_home, run_doc_snippets, run_rebuild, towerbridge, train_synthetic, write_synthetic
from towerbridge import steps
from towerbridge.milvus import server
from towerbridge.milvus.schema import DEFAULT_ALIAS
from towerbridge.milvus.store import ItemStore
from towerbridge.towers import artifact

QUIET = {"log": lambda message: None}
KEPT = ("insert_log", "stats_log", "delta_log", "index_files")


def stored_files() -> dict[str, str]:
    """Every persistent file of the server, by path under its storage directory: sha256."""
    root = server.storage_dir()
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for part in KEPT for path in sorted((root / part).rglob("*")) if path.is_file()}


def restart() -> str:
    server.stop()
    state, started = server.start_serving(**QUIET)
    assert started
    return state.uri


def answer(*args: str):
    """A towerbridge command's JSON answer (the command must succeed)."""
    result = towerbridge(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def home(towerbridge_home, milvus_uri, tmp_path_factory):
    yield from own_server_home(towerbridge_home, tmp_path_factory, "kept-home")


@pytest.fixture(scope="module")
def version(home, tmp_path_factory):
    """A version behind the default alias, as `towerbridge run` leaves it."""
    state, _ = server.start(**QUIET)
    model_dir = train_synthetic(tmp_path_factory.mktemp("kept"), n_users=300, n_items=400, n_topics=8, seed=7)
    built = steps.index_model(model_dir, state.uri, progress=False)
    trained = artifact.load(model_dir)
    return {"collection": built.collection, "user": str(trained.user_ids[5]), "item": str(trained.item_ids[3])}


READERS = {
    "similar": lambda v: ("similar", "--item", v["item"], "-k", "5"),
    "recommend": lambda v: ("recommend", "--user", v["user"], "-k", "5"),
    "query vectors": lambda v: ("query", "--filter", f"item_id in [{v['item']}, 1, 2]",
                                "--fields", "item_id,embedding,title,genres,genre_list"),
    "query scalars": lambda v: ("query", "--filter", 'array_contains(genre_list, "Drama")', "--limit", "20"),
}


@pytest.mark.integration
def test_every_reader_answers_the_same_after_a_restart_and_keeps_every_file(version, monkeypatch):
    """Each command that reads stored fields, and the documented snippets, asked before and
    after one stop and start of the server."""
    server.start(**QUIET)
    before = stored_files()
    first = {reader: answer(*args(version)) for reader, args in READERS.items()}
    first["docs"] = run_doc_snippets(monkeypatch)
    assert all(first.values()) and first["docs"][0] == version["collection"]
    restart()
    assert stored_files() == before
    for reader, args in READERS.items():
        assert answer(*args(version)) == first[reader], reader
    assert run_doc_snippets(monkeypatch) == first["docs"]
    assert stored_files() == before


@pytest.mark.integration
def test_similar_run_twice_each_time_starting_and_stopping_the_server_answers_the_same(version):
    """The reported sequence: each command starts the embedded server and stops it again."""
    server.stop()
    before = stored_files()
    started = towerbridge(*READERS["similar"](version), "--json")
    assert started.returncode == 0 and "Starting the embedded Milvus" in started.stderr
    first = json.loads(started.stdout)  # JSON alone on stdout: the server's notices went to stderr
    assert server.running() is None  # the command stopped the server it started
    assert stored_files() == before
    assert answer(*READERS["similar"](version)) == first
    assert stored_files() == before


@pytest.mark.integration
def test_json_commands_print_only_json_when_they_start_and_stop_the_server(version, tmp_path):
    """stdout is JSON alone, even when the command starts the embedded server and stops it:
    its notices go to stderr. Similar is the test above; here `items retire` (it printed them
    on stdout once). The other commands are asked of a running server: each start and stop
    costs half a minute."""
    server.start_serving(**QUIET)  # as `towerbridge milvus start`: up, and every version loaded again
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,genres\n9001,A Film Added And Retired (2026),Drama\n")
    for args in (READERS["recommend"](version), READERS["query scalars"](version), ("collections",),
                 ("items", "add", "--items", str(path))):
        result = towerbridge(*args, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout), args
    server.stop()
    result = towerbridge("items", "retire", "--ids", "9001", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["retired"] == 1
    assert "Starting the embedded Milvus" in result.stderr and "Stopping" in result.stderr
    assert server.running() is None  # the command stopped the server it started
    status = towerbridge("milvus", "status", "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["running"] is False
    checked = towerbridge("data", "check", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["dataset"] == "synthetic"


@pytest.mark.integration
def test_a_damaged_serving_version_is_reported_and_the_next_rebuild_replaces_it(version, prefect_harness,
                                                                               tmp_path_factory):
    uri = server.start(**QUIET)[0].uri
    with ItemStore(uri) as store:
        damaged = store.alias_target(DEFAULT_ALIAS)
        assert store.missing_files(damaged) == []
    vectors = sorted(server.storage_dir().glob("insert_log/*/*/*/101/*"))
    assert vectors
    for path in vectors:  # what the chunk cache did to the vector binlogs before the fix
        path.unlink()
    uri = restart()

    rows = {row["collection"]: row for row in answer("collections")}
    assert rows[damaged]["damaged"] and rows[damaged]["alias_target"] and not rows[damaged]["serving"]
    assert any(path.endswith("/101/") for path in rows[damaged]["missing_files"])
    status = answer("milvus", "status")
    assert list(status["damaged"]) == [damaged]
    refused = towerbridge(*READERS["similar"](version))
    assert refused.returncode != 0 and f"{damaged} is damaged" in refused.stderr
    assert "Traceback" not in refused.stderr

    data_dir = write_synthetic(tmp_path_factory.mktemp("kept-data"), n_users=300, n_items=400, n_topics=8, seed=7)
    outcome, summary = run_rebuild(data_dir, DEFAULT_ALIAS, uri, epochs=1)
    assert outcome.is_completed(), summary.get("error")
    assert summary["serving_before"] == damaged and summary["serving_damaged"]
    assert summary["serving_after"] != damaged and damaged in summary["dropped_versions"]
    checks = {check["check"]: check for check in summary["decision"]["checks"]}
    assert "damaged" in checks["metrics vs serving"]["detail"]

    # the rebuilt version survives a restart with every file, and answers
    before = stored_files()
    first = answer(*READERS["similar"](version))
    restart()
    assert stored_files() == before
    assert answer(*READERS["similar"](version)) == first
    assert answer("milvus", "status")["damaged"] == {}
