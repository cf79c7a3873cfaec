"""The towerbridge command as a user runs it: a real process, its output and exit code."""

import json

import pytest

from tests.conftest import towerbridge


def test_help_explains_commands_and_environment():
    result = towerbridge("--help")
    assert result.returncode == 0
    for text in ("run", "milvus", "TOWERBRIDGE_HOME", "MILVUS_URI", "MILVUS_TOKEN"):
        assert text in result.stdout
    assert "--report-dir" in towerbridge("run", "--help").stdout


def test_unreachable_milvus_uri_is_one_line_and_non_zero():
    result = towerbridge("run", env={"MILVUS_URI": "http://127.0.0.1:9", "MILVUS_TOKEN": "s3cret-token"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("towerbridge: error: cannot reach Milvus at http://127.0.0.1:9 after 4 attempts")
    assert "Traceback" not in result.stderr + result.stdout
    assert "s3cret-token" not in result.stderr + result.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["run", "--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir: not a directory"),
    (["run", "--m", "5", "--user-tower", "id"], "--m 5 must divide the vector dimension 32 (of the id tower)"),
    (["run", "--m", "7"], "--m 7 must divide the vector dimension 65 (of the sequence tower)"),
    (["run", "--index", "scann", "--m", "8"],
     "--m and --nbits set IVF_PQ's codes; --index scann has fixed 4-bit codes (leave them out)"),
    (["run", "--keep-versions", "0"], "--keep-versions must be at least 1, got 0"),
    (["run", "--eval-users", "0"], "eval_users (--eval-users) must be at least 1, got 0"),
    (["run", "--train-processes", "0"], "--train-processes must be a whole number of processes, 1 or more, got 0"),
    (["run", "--embed-workers", "-1"], "--embed-workers must be 0 (embed in this process) or more, got -1"),
    (["run", "--dask-address", "10.0.0.5"],
     "--dask-address '10.0.0.5': expected a scheduler address such as tcp://10.0.0.5:8786"),
    (["rebuild", "--train-processes", "-2"],
     "--train-processes must be a whole number of processes, 1 or more, got -2"),
    (["run", "--ks", "10,0"], "every k must be between 1 and 16384 (Milvus' search limit), got [0, 10]"),
])
def test_bad_options_are_refused_before_any_work(args, message):
    result = towerbridge(*args, timeout=60)  # refused at once; a minute means it went on to work
    assert result.returncode == 1
    assert result.stderr.strip() == f"towerbridge: error: {message}"


def test_set_gives_the_settings_a_command_has_no_option_for_and_refuses_those_it_has():
    from towerbridge.cli import parser
    from towerbridge.cli.options import pipeline_options, rebuild_options
    from towerbridge.errors import ConfigError

    train = pipeline_options(parser().parse_args(["run", "--set", "temperature=0.05", "--set", "vector_dim=33",
                                                  "--set", "dropout=0.2"])).train
    assert (train.temperature, train.vector_dim, train.tower_settings) == (0.05, 33, {"dropout": 0.2})
    config = train.tower_config("leave-last-out")
    assert (config.temperature, config.vector_dim, config.dropout) == (0.05, 33, 0.2)
    # rebuild has no --early-stopping: --set gives it; run has one: --set names it
    assert rebuild_options(parser().parse_args(["rebuild", "--set", "early_stopping_patience=3"])
                           ).train.early_stopping_patience == 3
    with pytest.raises(ConfigError, match="cannot set early_stopping_patience: give --early-stopping instead"):
        pipeline_options(parser().parse_args(["run", "--set", "early_stopping_patience=3"]))


def test_the_options_defaults_and_their_help_come_from_defaults_py(monkeypatch, capsys):
    from towerbridge import defaults
    from towerbridge.cli import parser
    from towerbridge.cli.options import pipeline_options, rebuild_options
    from towerbridge.data.options import DataOptions
    from towerbridge.options import PipelineOptions, RebuildOptions, TrainOptions

    # with no options given, the command line builds the flows' defaults
    assert rebuild_options(parser().parse_args(["rebuild"])) == RebuildOptions(train=TrainOptions(data=DataOptions()))
    assert pipeline_options(parser().parse_args(["run"])) == PipelineOptions(train=TrainOptions(data=DataOptions()))
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option's help
    helps = {}
    for command in ("run", "rebuild"):
        with pytest.raises(SystemExit):
            parser().parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
    assert f"top-k cut-offs to report (default: {','.join(map(str, defaults.REPORT_KS))})" in helps["run"]
    for expected in (f"(default: {','.join(defaults.GATE_METRICS)})", f"(absolute, default {defaults.GATE_TOLERANCE})",
                     f"(default {defaults.TARGET_RECALL})", f"dropped (default {defaults.KEEP_VERSIONS})",
                     f"Default {defaults.TRAIN_PROCESSES}", f"default {defaults.EMBED_WORKERS}: in this process",
                     f"per-user differences; default {defaults.GATE_CONFIDENCE})",
                     f"all: every one of them (default {defaults.EVAL_USERS:,})"):
        assert expected in helps["rebuild"], expected
    # --eval-users: a number, or all (every user with held-out interactions)
    for given, users in ((["--eval-users", "all"], None), (["--eval-users", "500"], 500), ([], defaults.EVAL_USERS)):
        assert rebuild_options(parser().parse_args(["rebuild", *given])).evaluate.eval_users == users
        assert pipeline_options(parser().parse_args(["run", *given])).evaluate.eval_users == users


def test_run_prints_model_and_popularity(milvus_uri, tmp_path):
    # The README's main command, on the session's embedded server (reused, not restarted), with
    # two data-parallel training processes (DDP; tests/towers/test_distributed.py has the rest)
    # and the embedding on two Dask workers (tests/flows/test_embed_dask.py).
    result = towerbridge("run", "--epochs", "2", "--report-dir", str(tmp_path), "--ks", "100,10,50",
                         "--eval-users", "500", "--train-processes", "2", "--embed-workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedding the catalog in 8 shards on a local Dask cluster of 2 workers" in result.stderr + result.stdout
    assert "model" in result.stdout and "popularity" in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["users_evaluated"] == 500 and report["ks"] == [10, 50, 100]
    assert report["training"]["processes"] == 2 and report["training"]["epochs"] == 2
    assert "2 epochs, 2 data-parallel processes (PyTorch DDP)" in (tmp_path / "evaluation.md").read_text()
    assert [row[0] for row in table] == ["10", "50", "100"]
    assert float(table[0][1]) == pytest.approx(report["model"]["hit_rate@10"], abs=1e-4)
    assert float(table[0][3]) == pytest.approx(report["popularity"]["hit_rate@10"], abs=1e-4)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--dataset", "netflix"], "argument --dataset: invalid choice: 'netflix'"),
    (["run", "--protocol", "random"], "argument --protocol: invalid choice: 'random'"),
])
def test_unknown_dataset_or_protocol_lists_the_choices(args, message):
    result = towerbridge(*args)
    assert result.returncode == 2
    assert message in result.stderr and "choose from" in result.stderr


def test_malformed_movielens_line_is_named_without_traceback(milvus_uri, prefect_api, tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n2\t2\t3\n")
    (tmp_path / "u.item").write_text("1|A (1995)|01-Jan-1995||x|" + "|".join(["0"] * 19) + "\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    result = towerbridge("run", "--dataset", "movielens-100k", "--data-dir", str(tmp_path), env=prefect_api)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("towerbridge: error: ")]
    assert len(errors) == 1 and "u.data, line 2: expected 4 tab-separated fields, found 3" in errors[0]
