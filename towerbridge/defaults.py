"""Defaults shared by the CLI, the flows and the steps, each written once."""

from __future__ import annotations

import time

from towerbridge.errors import ConfigError

# Index recall@100 against exact search that tuning aims for and a new version must reach.
TARGET_RECALL = 0.95
# Complete versions of an alias kept after a build (the served one always among them).
KEEP_VERSIONS = 3
# The nightly rebuild: 02:00 UTC.
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
# The query tower, unless chosen: the sequence tower reads the user's history and wins where the
# held-out items are the user's next ones (leave-last-out, time-cutoff); under the random split
# of the tfrs protocol they are not, and the id tower wins there (figures in BENCHMARKS.md).
DEFAULT_USER_TOWER = "sequence"
RANDOM_SPLIT_USER_TOWER = "id"
# Cut-offs at which the evaluation reports every metric.
REPORT_KS = (1, 5, 10, 20, 50, 100)
# The rebuild's gate: a candidate serves only when these metrics are not worse than the
# serving version's by more than the tolerance (absolute).
GATE_METRICS = ("hit_rate@10", "ndcg@10")
GATE_TOLERANCE = 0.005


def utc_now() -> str:
    """The current time as recorded in manifests, versions and reports: ISO 8601, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def user_tower_for(protocol: str, chosen: str | None = None) -> str:
    """The query tower to train: ``chosen``, else the default for the evaluation ``protocol``."""
    if chosen:
        return chosen
    return RANDOM_SPLIT_USER_TOWER if protocol == "tfrs" else DEFAULT_USER_TOWER


def check_keep_versions(keep_versions: int, option: str = "keep_versions") -> int:
    if keep_versions < 1:
        raise ConfigError(f"{option} must be at least 1, got {keep_versions}")
    return keep_versions


def check_eval_users(eval_users: int | None) -> None:
    if eval_users is not None and eval_users < 1:
        raise ConfigError(f"eval_users (--eval-users) must be at least 1, got {eval_users}")


def check_train_processes(processes: int, option: str = "train_processes") -> int:
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"{option} must be a whole number of processes, 1 or more, got {processes!r}")
    return processes
