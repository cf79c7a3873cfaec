"""Defaults shared by the CLI, the flows and the steps, each written once."""

from __future__ import annotations

import time

from towerbridge.errors import ConfigError

# The data a run reads unless told otherwise, and how it is split for evaluation.
DATASET = "synthetic"
PROTOCOL = "leave-last-out"
# Data-parallel training processes (1: this one) and Dask workers embedding the catalog (0: none, this process).
TRAIN_PROCESSES = 1
EMBED_WORKERS = 0
# The index a new version gets unless told otherwise (milvus/index.py): AUTO is IVF_PQ, and SCANN
# where IVF_PQ's tuned search falls short of TARGET_RECALL (at 1M items it stops at 0.77).
INDEX_TYPE = "AUTO"
# Index recall@100 against exact search that tuning aims for and a new version must reach.
TARGET_RECALL = 0.95
# Complete versions of an alias kept after a build (the served one always among them).
KEEP_VERSIONS = 3
# The nightly rebuild: 02:00 UTC.
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
# `towerbridge serve`'s second deployment, a rebuild that trains from scratch (the nightly one
# continues the serving model): Sundays at 04:00, after that night's rebuild.
FULL_RETRAIN_CRON = "0 4 * * 0"
# The query tower, unless chosen: the sequence tower reads the user's history and wins where the
# held-out items are the user's next ones (leave-last-out, time-cutoff); under the random split
# of the tfrs protocol they are not, and the id tower wins there (figures in BENCHMARKS.md).
DEFAULT_USER_TOWER = "sequence"
RANDOM_SPLIT_USER_TOWER = "id"
# Cut-offs at which the evaluation reports every metric.
REPORT_KS = (1, 5, 10, 20, 50, 100)
# The rebuild's gate: the candidate and the serving model rank the same users; the candidate is
# rejected only when, for one of these metrics, the GATE_CONFIDENCE interval of its mean per-user
# difference (candidate - serving) lies wholly below -GATE_TOLERANCE (an absolute margin).
GATE_METRICS = ("hit_rate@10", "ndcg@10")
GATE_TOLERANCE = 0.005
GATE_CONFIDENCE = 0.95
# Fewer users than this and the gate's interval is unbounded (it never rejects): its normal
# approximation needs a few dozen users.
GATE_MIN_USERS = 30
# The seed of the evaluation's sample of users and of its random baseline.
EVALUATION_SEED = 0
# Users an evaluation ranks when more have held-out interactions: a seeded sample of this many.
# Every user of MovieLens 1M (6,040) and of the built-in log; at 1M users x 1M items the exact-
# search baseline for everyone costs hours, for 10,000 under two minutes (BENCHMARKS.md), and
# the gate's interval narrows as 1/sqrt(users).
# `--eval-users all` ranks everyone.
EVAL_USERS = 10_000
# The rebuild: how long it waits for another rebuild of the same alias to finish, and how often
# a Milvus task is retried after a transient failure.
REBUILD_LOCK_TIMEOUT_S = 3600.0
REBUILD_RETRIES = 2
# Epochs of a rebuild that continues the serving model over the whole log (towers/warm.py): on
# MovieLens 100K with a day's new data, 5 or 10 come within 1.4% of a from-scratch model (HR@10,
# 3 seeds; 2: 4% lower), 10 with the smallest spread (BENCHMARKS.md, "Continual training").
CONTINUAL_EPOCHS = 10
# ... and at most this long (seconds), unless a training budget is given: at a million items one
# pass over the log takes about 15 minutes here, so a continued nightly trains for two passes and
# the rebuild (SCANN index, evaluation, gate) fits in an hour; on smaller catalogs ten epochs end first.
CONTINUAL_BUDGET_S = 1800.0


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
