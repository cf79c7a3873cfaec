"""Bad input at the boundary: each case is a real `towerbridge` process given something wrong.

Every case must end with exit status 1 (2 for argparse's own usage errors), one message
naming the problem, and no traceback. These fail before any Milvus or Prefect work, so
nothing serving can change; cases that reach Milvus are in the flow and fault tests.
"""

import os
import subprocess
import sys

import pytest

SPEC_MISSING_FILE = '[interactions]\npath = "missing.csv"\nuser = "u"\nitem = "i"\ntimestamp = "t"\n'
SPEC_NO_USER = '[interactions]\npath = "events.csv"\nitem = "i"\ntimestamp = "t"\n'

# (case id, files to write into the working directory, arguments, exit status, text the message must contain)
CASES = [
    ("movielens-dir-without-u-item", {"u.data": "1\t1\t5\t881250949\n"},
     ["data", "check", "--dataset", "movielens-100k", "--data-dir", "."], 1, "u.item: file not found"),
    ("data-dir-is-a-file", {"file.txt": "x"}, ["data", "check", "--data-dir", "file.txt"], 1,
     "--data-dir file.txt: not a directory"),
    ("data-dir-missing", {}, ["run", "--data-dir", "nowhere"], 1, "--data-dir nowhere: not a directory"),
    ("spec-file-missing", {}, ["data", "check", "--dataset-spec", "none.toml"], 1,
     "--dataset-spec none.toml: file not found"),
    ("spec-not-toml", {"broken.toml": "not = [valid\n"}, ["data", "check", "--dataset-spec", "broken.toml"], 1,
     "broken.toml: not valid TOML"),
    ("spec-names-missing-table", {"spec.toml": SPEC_MISSING_FILE}, ["data", "check", "--dataset-spec", "spec.toml"],
     1, "missing.csv: file or directory not found"),
    ("spec-without-user-column", {"spec.toml": SPEC_NO_USER, "events.csv": "u,i,t\n1,2,3\n"},
     ["data", "check", "--dataset-spec", "spec.toml"], 1, "spec.toml: [interactions] needs user"),
    ("unknown-dataset", {}, ["run", "--dataset", "netflix"], 2, "invalid choice: 'netflix'"),
    ("unknown-protocol", {}, ["run", "--protocol", "random"], 2, "invalid choice: 'random'"),
    ("epochs-zero", {}, ["run", "--epochs", "0"], 1, "--epochs must be at least 1, got 0"),
    ("epochs-not-a-number", {}, ["run", "--epochs", "many"], 2, "argument --epochs: invalid int value: 'many'"),
    ("eval-users-not-a-number", {}, ["run", "--eval-users", "most"], 2,
     "argument --eval-users: a number of users or 'all', not 'most'"),
    ("min-rating-not-a-number", {}, ["run", "--min-rating", "abc"], 2, "invalid float value: 'abc'"),
    ("cutoff-unparseable", {}, ["run", "--protocol", "time-cutoff", "--cutoff", "yesterday-ish"], 1,
     "--cutoff 'yesterday-ish': expected unix seconds or a date"),
    ("holdout-zero", {}, ["run", "--holdout", "0"], 1, "--holdout must be at least 1, got 0"),
    ("test-fraction-above-one", {}, ["run", "--test-fraction", "2"], 1,
     "--test-fraction must be between 0 and 1 (exclusive), got 2.0"),
    ("nbits-too-large", {}, ["run", "--nbits", "17"], 1, "--nbits must be between 1 and 16, got 17"),
    ("nlist-zero", {}, ["run", "--nlist", "0"], 1, "--nlist must be at least 1, got 0"),
    ("m-does-not-divide-dim", {}, ["run", "--m", "7"], 1,
     "--m 7 must divide the vector dimension 65 (of the sequence tower)"),
    ("keep-versions-zero", {}, ["rebuild", "--keep-versions", "0"], 1, "--keep-versions must be at least 1, got 0"),
    ("ks-zero", {}, ["run", "--ks", "0,10"], 1, "every k must be between 1 and 16384"),
    ("ks-not-numbers", {}, ["run", "--ks", "ten"], 2, "expected comma-separated whole numbers"),
    ("eval-users-zero", {}, ["run", "--eval-users", "0"], 1, "--eval-users) must be at least 1, got 0"),
    ("metrics-unknown", {}, ["rebuild", "--metrics", "precision@10"], 1, "--metrics: 'precision@10' is not one of"),
    ("tolerance-negative", {}, ["rebuild", "--tolerance", "-1"], 1, "--tolerance must be 0 or more, got -1.0"),
    ("confidence-a-percentage", {}, ["rebuild", "--confidence", "95"], 1,
     "--confidence must be between 0 and 1 (exclusive, e.g. 0.95), got 95.0"),
    ("target-recall-above-one", {}, ["rebuild", "--target-recall", "2"], 1, "--target-recall must be in (0, 1]"),
    ("timezone-unknown", {}, ["serve", "--timezone", "Mars/Base"], 1, "--timezone 'Mars/Base': not an IANA time zone"),
    ("k-zero", {}, ["recommend", "--user", "1", "-k", "0"], 1, "-k must be between 1 and 16384"),
    ("bench-ml100k-wrong-dir", {}, ["bench", "--ml100k", "."], 1, "--ml100k .: no u.data there"),
    # names that become file names (the rebuild's lock) and Milvus names
    ("alias-escapes-its-directory", {}, ["rebuild", "--alias", "../../etc/cron"], 1,
     "--alias '../../etc/cron': Milvus names are letters, digits and underscores"),
    ("alias-with-a-quote", {}, ["run", "--alias", 'items" or "1'], 1, "Milvus names are letters, digits"),
    ("home-is-a-file", {"home": "a file"}, ["rebuild"], 1, "home: not a directory; it is needed as TOWERBRIDGE_HOME"),
    ("password-without-user", {}, ["collections"], 1, "MILVUS_USER and MILVUS_PASSWORD go together"),
    ("ca-cert-missing", {}, ["collections"], 1, "MILVUS_CA_CERT nowhere.pem: file not found"),
]
ENVIRONMENT = {  # cases that are about the environment rather than the arguments
    "home-is-a-file": {"TOWERBRIDGE_HOME": "home"},
    "password-without-user": {"MILVUS_PASSWORD": "s3cret-pw"},
    "ca-cert-missing": {"MILVUS_CA_CERT": "nowhere.pem"},
}


@pytest.mark.parametrize("case, files, args, status, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, case, files, args, status, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "MILVUS_URI": "http://127.0.0.1:9",  # nothing may reach a server
           **{key: str(tmp_path / value) if key == "TOWERBRIDGE_HOME" else value
              for key, value in ENVIRONMENT.get(case, {}).items()}}
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == status, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "cannot reach Milvus" not in result.stderr  # refused before any connection was tried
    assert "s3cret-pw" not in result.stderr + result.stdout
