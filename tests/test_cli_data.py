"""Bad input through the real command (`towerbridge data check`, which runs exactly the data
steps of `towerbridge run`): each case prints one line naming the problem and exits 1."""


import json

import pandas as pd
import pytest

from tests.conftest import towerbridge

GOOD_ITEMS = "sku,name,cats\nA,Alpha,x\nB,Beta,y\n"
SPEC = """
[interactions]
path = "events.csv"
user = "customer"
item = "sku"
timestamp = "ts"

[items]
path = "items.csv"
id = "sku"
title = "name"
genres = "cats"
"""



def spec_dir(tmp_path, events, items=GOOD_ITEMS):
    (tmp_path / "events.csv").write_text(events)
    (tmp_path / "items.csv").write_text(items)
    (tmp_path / "shop.toml").write_text(SPEC)
    return ["--dataset-spec", str(tmp_path / "shop.toml")]


def ml100k_dir(tmp_path, data):
    item = "{id}|Movie {id} (1995)|01-Jan-1995||x|" + "|".join(["0"] * 19)
    (tmp_path / "u.data").write_text(data)
    (tmp_path / "u.item").write_text("\n".join(item.format(id=i) for i in (1, 2)) + "\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|30|F|other|12345\n")
    return ["--dataset", "movielens-100k", "--data-dir", str(tmp_path)]


CASES = {
    "missing directory": (lambda t: ["--dataset", "movielens-100k", "--data-dir", str(t / "nope")],
                          "--data-dir {t}/nope: not a directory"),
    "missing file": (lambda t: (ml100k_dir(t, "1\t1\t5\t1\n"), (t / "u.item").unlink())[0],
                     "{t}/u.item: file not found"),
    "file where a directory is expected": (lambda t: ((t / "f").write_text("x"), ["--dataset", "movielens-1m",
                                                                                  "--data-dir", str(t / "f")])[1],
                                           "--data-dir {t}/f: not a directory"),
    "empty interactions": (lambda t: spec_dir(t, "customer,sku,ts\n"), "the interactions table is empty"),
    "wrong delimiter": (lambda t: spec_dir(t, "customer;sku;ts\nc1;A;1\n"),
                        "(one column only: is ',' the right delimiter?)"),
    "too few fields": (lambda t: ml100k_dir(t, "1\t1\t5\t881250949\n2\t2\t3\n"),
                       "{t}/u.data, line 2: expected 4 tab-separated fields, found 3"),
    "non-numeric id": (lambda t: ml100k_dir(t, "1\t1\t5\t881250949\nu2\t2\t3\t881250950\n"),
                       "{t}/u.data, line 2: field 1 (user id) must be an integer, found 'u2'"),
    "unparseable timestamp": (lambda t: spec_dir(t, "customer,sku,ts\nc1,A,yesterday\n"),
                              "{t}/events.csv, line 2: column 'ts' value 'yesterday' is not a timestamp"),
    "null id": (lambda t: spec_dir(t, "customer,sku,ts\nc1,A,1\n,B,2\n"),
                "{t}/events.csv, line 3: column 'customer' is empty (null id)"),
    "unknown items": (lambda t: spec_dir(t, "customer,sku,ts\nc1,A,1\nc1,Q,2\nc2,R,3\nc2,A,4\n"),
                      "2 interaction(s) reference items absent from the items table (2 distinct ids), "
                      "e.g. item_id ['Q', 'R']; pass --drop-unknown-items to drop them"),
    "unknown dataset spec": (lambda t: ["--dataset-spec", str(t / "none.toml")],
                             "--dataset-spec {t}/none.toml: file not found"),
    "bad cutoff": (lambda t: ["--protocol", "time-cutoff", "--cutoff", "someday"],
                   "--cutoff 'someday': expected unix seconds or a date such as 2024-05-01"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_exit_1(tmp_path, case):
    arguments, expected = CASES[case]
    result = towerbridge("data", "check", *arguments(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("towerbridge: error: ")
    assert expected.format(t=tmp_path) in lines[0]


def test_drop_unknown_items_drops_and_reports(tmp_path):
    arguments = spec_dir(tmp_path, "customer,sku,ts\nc1,A,1\nc1,Q,2\nc1,B,3\nc2,A,4\nc2,B,5\n")
    result = towerbridge("data", "check", *arguments, "--drop-unknown-items")
    assert result.returncode == 0, result.stderr
    assert "dropped (unknown items): 1 interactions, e.g. Q" in result.stdout
    assert "shop from" in result.stdout and "4 interactions, 2 users, 2 items" in result.stdout


def test_filters_report_their_counts(tmp_path):
    frame = pd.DataFrame({"customer": ["a", "a", "b", "b", "b", "c"], "sku": ["A", "A", "A", "B", "A", "B"],
                          "ts": [1, 2, 3, 4, 5, 6]})
    (tmp_path / "events.csv").write_text(frame.to_csv(index=False))
    arguments = spec_dir(tmp_path, frame.to_csv(index=False))
    result = towerbridge("data", "check", *arguments, "--dedupe", "keep-last", "--min-user-interactions", "2")
    assert result.returncode == 0, result.stderr
    assert "filter deduplicate (keep last): removed 2 of 6" in result.stdout
    assert "filter users with >= 2 interactions: removed 2 of 4" in result.stdout


def test_out_keeps_the_prepared_data(tmp_path):
    arguments = spec_dir(tmp_path, "customer,sku,ts\nc1,A,1\nc1,B,3\nc2,A,4\nc2,B,5\nc3,B,6\nc3,A,7\n")
    out = tmp_path / "prepared"
    result = towerbridge("data", "check", *arguments, "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interactions"] == 6
    assert len(pd.read_parquet(out / "train.parquet")) == summary["train"] > 0
    assert len(pd.read_parquet(out / "held_out.parquet")) == summary["held_out"] > 0
    again = towerbridge("data", "check", *arguments, "--out", str(out))
    assert again.returncode == 1
    assert again.stderr.strip() == f"towerbridge: error: --out {out}: already exists; give a new directory"
