"""The query towers, by name: the one place that knows which towers exist.

Each entry names the module that holds the tower's class (a ``QueryTower``,
``towers/query.py``) and the settings that tower trains best with (chosen on MovieLens 100K,
figures in BENCHMARKS.md). The entries need no torch, so the command line checks a model's
settings before it imports any. Adding a tower: one module with its class, one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from towerbridge.errors import ConfigError

if TYPE_CHECKING:
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.query import QueryTower

# The history towers: a batch is one history per user, every catalog item is a negative up to
# full_softmax_items (no sampling, so no logQ correction), and a wider tower; their item id
# embedding is as wide as the tower (feature_dim left to the width: MovieLens-1M, BENCHMARKS.md,
# issue 30). Their logq_correction is left unset: ``prepare`` turns it on where the catalog is
# sampled (without it the sampled softmax fell to 0.040 HR@10 from 0.104 at 50k items, issue 31).
HISTORY_SETTINGS = {"vector_dim": 65, "batch_size": 128, "learning_rate": 0.002, "epochs": 40}
# The sequence tower's gated blocks (TowerConfig.gated_blocks, feed_forward_mult) cost about a
# third more per epoch than SASRec's: 32 epochs keep MovieLens-1M's training within 15 minutes
# on 2 cores.
# Its temperature is learned (from 0.1): it falls as far as training's loss pulls it in the steps
# given, which gains on MovieLens-1M, changes nothing on MovieLens 100K (a sixth of the steps) and
# loses on the built-in synthetic log (BENCHMARKS.md, issue 30).
# Its learning rate is twice the other history tower's, and the model kept is the moving average of
# its weights (ema_decay, about the last 50 steps): the average takes out the noise the larger
# steps leave; together they gain on MovieLens-1M (BENCHMARKS.md, issue 30).
# Each position's softmax leaves out the items the user had up to it (exclude_history "seen"):
# serving and the evaluation never rank them, and training no longer spends its gradient pushing
# them down (MovieLens-1M: BENCHMARKS.md, issue 30).
SEQUENCE_SETTINGS = {**HISTORY_SETTINGS, "epochs": 32, "learn_temperature": True, "learning_rate": 0.004,
                     "ema_decay": 0.98, "exclude_history": "seen"}


def _heads_divide_width(config: TowerConfig) -> None:
    if config.tower_dim % config.attention_heads:
        raise ConfigError(f"attention_heads {config.attention_heads} must divide the tower width "
                          f"vector_dim - 1 = {config.tower_dim}")


@dataclass(frozen=True)
class TowerKind:
    """A query tower as the registry knows it.

    module, cls: where its ``QueryTower`` class is (imported when first asked for);
    defaults: the settings that take this tower's values when left unset (``TowerConfig``);
    check: what this tower needs of the settings beyond ``TowerConfig``'s own checks;
    summary: one line for ``--help``."""

    name: str
    module: str
    cls: str
    defaults: dict
    summary: str
    check: Callable[[TowerConfig], None] | None = field(default=None, compare=False)

    def load(self) -> type[QueryTower]:
        return getattr(importlib.import_module(self.module), self.cls)


QUERY_TOWERS: dict[str, TowerKind] = {kind.name: kind for kind in (
    TowerKind("sequence", "towerbridge.towers.sequence", "SequenceTower", SEQUENCE_SETTINGS,
              "causal self-attention over the user's last items (SASRec-style)", check=_heads_divide_width),
    TowerKind("pooled", "towerbridge.towers.pooled", "PooledTower", HISTORY_SETTINGS,
              "a recency-weighted average of the user's last items"),
    TowerKind("id", "towerbridge.towers.id_tower", "IdTower",
              {"vector_dim": 32, "feature_dim": 32, "batch_size": 1024, "learning_rate": 0.01, "logq_correction": True,
               "epochs": 8},
              "the user's id and features, in-batch negatives with the logQ correction"),
)}


def tower_kind(name: str) -> TowerKind:
    """The registry's entry for ``name``; a ``ConfigError`` naming the known ones otherwise."""
    try:
        return QUERY_TOWERS[name]
    except KeyError:
        raise ConfigError(f"user_tower must be one of {', '.join(QUERY_TOWERS)}, got {name!r}") from None


def query_tower(name: str) -> type[QueryTower]:
    """The class of the query tower ``name``."""
    return tower_kind(name).load()
