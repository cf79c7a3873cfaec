"""Evaluation reports, on hand-made reports."""

import dataclasses
import json

import pytest

from tests.factories import evaluation_report
from towerbridge.report import report_markdown, report_table, write_report
from towerbridge.results import EvaluationReport


def report(hit_rate_10: float = 0.14, ndcg_10: float = 0.07) -> EvaluationReport:
    return evaluation_report(hit_rate_10, ndcg_10)


def test_table_and_markdown_carry_every_source():
    assert report_table(report()) == [
        {"k": 1, "model": 0.014, "exact": 0.0142, "popularity": 0.0086, "random": 0.0005},
        {"k": 10, "model": 0.14, "exact": 0.142, "popularity": 0.086, "random": 0.005},
    ]
    markdown = report_markdown(report())
    assert "| 10 | 0.1400 | 0.1420 | 0.0860 | 0.0050 |" in markdown
    assert "| 10 | 0.9800 | -0.0010 | -0.0010 |" in markdown  # index recall and ANN gap
    assert "943 users, 943 queries (one per user)" in markdown
    assert "| k | model (Milvus IVF_PQ) | model (exact search) | popularity | random |" in markdown
    scann = dataclasses.replace(report(), index={**report().index, "index_type": "SCANN"})
    assert "| k | model (Milvus SCANN) | model (exact search)" in report_markdown(scann)
    # a sample of the users says so, and how to rank every one
    sampled = report_markdown(dataclasses.replace(report(), users_eligible=993_339))
    assert ("943 users (a seeded sample of the 993,339 with held-out interactions; --eval-users sets its size, "
            "all ranks every one), 943 queries") in sampled


def test_the_report_says_which_temperature_the_model_was_trained_with():
    learned = dataclasses.replace(report(), training={**report().training, "temperature": 0.05522652,
                                                      "temperature_learned": True})
    assert ", temperature 0.05523 (learned)" in report_markdown(learned)
    fixed = dataclasses.replace(report(), training={**report().training, "temperature": 0.1,
                                                    "temperature_learned": False})
    assert "8 epochs, one process, temperature 0.1. Ranking" in report_markdown(fixed)
    assert "temperature" not in report_markdown(report())  # a report written before it was recorded
    averaged = dataclasses.replace(report(), training={**report().training, "temperature": 0.05,
                                                       "temperature_learned": True, "ema_decay": 0.98})
    assert ", temperature 0.05 (learned), weights averaged over steps (decay 0.98). Ranking" in \
        report_markdown(averaged)
    last = dataclasses.replace(averaged, training={**averaged.training, "ema_decay": 0.0})
    assert "averaged" not in report_markdown(last)
    seen = dataclasses.replace(averaged, training={**averaged.training, "exclude_history": "seen"})
    assert ("(decay 0.98), the items the user had up to it left out of each position's softmax. Ranking"
            in report_markdown(seen))
    assert "softmax" not in report_markdown(dataclasses.replace(seen, training={**seen.training,
                                                                               "exclude_history": "off"}))


def test_write_report_writes_json_markdown_and_png(tmp_path):
    write_report(report(), tmp_path / "report")
    written = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert written == ["evaluation.json", "evaluation.md", "hit_rate.png"]
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text())["model"]["hit_rate@10"] == 0.14
    assert (tmp_path / "report" / "hit_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_json_record_reads_back_to_the_same_report(tmp_path):
    write_report(report(), tmp_path)
    record = json.loads((tmp_path / "evaluation.json").read_text())
    assert "report_dir" not in record and record["ks"] == [1, 10]
    assert EvaluationReport.from_dict(record) == report()
    with pytest.raises(ValueError, match="evaluation record lacks model, exact"):
        EvaluationReport.from_dict({key: value for key, value in record.items() if key not in ("model", "exact")})
