"""The catalog flow (issue 32) under Prefect's test harness, on the real embedded Milvus: the
files dropped into an inbox are applied oldest first and filed in done/; one the model cannot
read goes to failed/ with a note, the others still apply, and the run fails naming it; the
deployment runs every few minutes, one run at a time."""

import os
import time

import pandas as pd
import pytest

from tests.conftest import train_synthetic
from towerbridge import steps
from towerbridge.options import CatalogOptions

ALIAS = "catalog_flow_test"


@pytest.fixture(scope="module")
def serving(milvus_uri, tmp_path_factory):
    model_dir = train_synthetic(tmp_path_factory.mktemp("catalog-flow"), epochs=1, n_users=300, n_items=600,
                                n_topics=6, seed=8)
    return steps.index_model(model_dir, milvus_uri, alias=ALIAS, progress=False).collection


def drop(path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    old = time.time() - 60  # settled: the flow leaves files still being written for the next run
    os.utime(path, (old, old))


def test_the_inbox_is_applied_oldest_first_and_a_bad_file_is_set_aside_with_its_reason(
        serving, milvus_uri, prefect_harness, store, tmp_path):
    from towerbridge.flows.catalog import catalog

    inbox = tmp_path / "inbox"
    new = pd.DataFrame({"item_id": [9001, 9002, 9003], "title": ["New A", "New B", "New C"],
                        "genres": ["Comedy", "Drama", "Comedy"]})
    drop(inbox / "add" / "monday.parquet", lambda path: new.to_parquet(path))
    drop(inbox / "retire" / "withdrawn.txt", lambda path: path.write_text("9002\n5\n"))
    drop(inbox / "add" / "broken.csv", lambda path: new.drop(columns="genres").assign(item_id=[9101, 9102, 9103])
         .to_csv(path, index=False))
    state = catalog(CatalogOptions(alias=ALIAS, inbox=str(inbox), milvus_uri=milvus_uri), return_state=True)
    assert state.is_failed()
    assert "1 inbox file(s) could not be applied" in state.message and "add/broken.csv" in state.message
    assert sorted(store.held(serving, [9001, 9002, 9003, 9101, 5])) == [9001, 9003]
    done = sorted(path.name.split("-", 1)[1] for path in (inbox / "done").iterdir())
    assert done == ["monday.parquet", "withdrawn.txt"] and not list((inbox / "add").iterdir())
    notes = list((inbox / "failed").glob("*.error.txt"))
    assert len(notes) == 1 and "the items lack the column(s) the model reads: genres" in notes[0].read_text()
    record = store.record(serving).catalog
    assert (record.added, record.retired) == (3, 2)


def test_changes_given_on_demand_and_the_deployment(serving, milvus_uri, prefect_harness, store):
    from towerbridge.flows.catalog import catalog, every

    updates = catalog(CatalogOptions(alias=ALIAS, retire_ids=[9003], milvus_uri=milvus_uri))
    assert [update.retired for update in updates] == [1] and store.held(serving, [9003]) == []
    deployment = every(5, CatalogOptions(alias=ALIAS, inbox="/srv/inbox"))
    assert deployment.name == "changes" and deployment.concurrency_limit == 1
    assert deployment.schedules[0].schedule.interval.total_seconds() == 300
    assert deployment.parameters == {"options": {"alias": ALIAS, "inbox": "/srv/inbox"}}
    with pytest.raises(ValueError, match="nothing to do"):
        CatalogOptions(alias=ALIAS)
