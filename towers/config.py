"""The knobs of the two-tower model and its training, as plain data."""

from __future__ import annotations

import functools
import numbers
import types
import typing
from dataclasses import asdict, dataclass, fields

from towerbridge.defaults import DEFAULT_USER_TOWER
from towerbridge.errors import ConfigError
from towerbridge.towers.registry import QUERY_TOWERS, tower_kind

SPARSE_ROWS = 100_000  # sparse_embeddings="auto": tables larger than this get sparse gradients
USER_TOWERS = tuple(QUERY_TOWERS)


@dataclass(frozen=True)
class TowerConfig:
    """Model shape and training settings.

    vector_dim, batch_size, learning_rate, logq_correction, epochs, learn_temperature, ema_decay,
        exclude_history: None
        (the default) takes the user tower's value (its ``defaults`` in ``towers/registry.py``).
    vector_dim: length of the vectors stored in Milvus. The towers output
        ``vector_dim - 1`` dimensions; the last slot carries the item's popularity
        prior on the item side and a constant 1 on the user side, so one inner
        product gives ``user·item / temperature + prior_weight * log p(item)``.
    feature_dim: width of each feature's embedding before the towers' MLP. None (the default):
        the user tower's value, else the towers' width (``vector_dim - 1``), so that an item's
        id embedding can use every dimension of the vector (the history towers: with ids only,
        a narrower embedding caps the item vectors' rank at its width).
    use_features: feed every recognised user and item column (genres, title, age, ...)
        besides the ids; off: ids only.
    hidden_dims: widths of the MLP's hidden layers (empty: one linear layer).
    temperature: divides the logits in the softmax and at serving time.
    learn_temperature: the temperature is a weight learned with the others, starting from
        ``temperature``; the trained model's config records the learned value, which the
        vectors in Milvus are scaled by. Off: ``temperature`` stays as given. On for the
        sequence tower (on MovieLens-1M it gains; on the built-in synthetic log it loses:
        BENCHMARKS.md, issue 30), off for the others unless asked for. It stops at 0.01.
    similarity: ``cosine``: both towers' outputs have unit length, and the logit is their
        cosine divided by ``temperature``; ``dot``: their plain inner product (divided by
        ``temperature``), the vectors' lengths learned.
    logq_correction: subtract ``log p(item)`` from in-batch logits while training,
        then add the prior back when ranking (``prior_weight``). None (the history towers'
        default): on exactly when the catalog is sampled (more than ``full_softmax_items``
        items), decided when the model is prepared.
    num_hard_negatives: keep only this many highest-scoring negatives per row.
    mixed_negatives: extra negatives per batch drawn uniformly from the catalog.
    optimizer: ``adam`` or ``adagrad``.
    sparse_embeddings: ``auto`` (sparse gradients for embedding tables with more than
        ``SPARSE_ROWS`` rows), ``always`` or ``never``. A sparse table is updated only in the
        rows a batch touched (``torch.optim.SparseAdam``, or Adagrad's sparse update):
        with a million users a dense Adam step rewrites every row, 40x slower here.
    epochs: the most epochs to train.
    ema_decay: the model kept is an exponential moving average of the weights along training,
        moved ``1 - ema_decay`` of the way towards them after every step (0: off, the last
        step's weights). Early stopping validates the average. Each step also updates a copy of
        every weight, except the tables with sparse gradients (``sparse_embeddings``), which keep
        their last step's rows. 0.98 for the sequence tower (with twice the learning rate:
        MovieLens-1M, BENCHMARKS.md, issue 30), off for the others.
    learning_rate_schedule: ``constant``, or ``cosine``: the rate falls from ``learning_rate``
        to 0 along half a cosine over the ``epochs`` (step by step), so the last epochs take small
        steps; early stopping or a time budget may end training before the end of the schedule.
    time_budget: seconds of training (None: no limit). Training stops once they are spent, in
        the middle of an epoch if need be (with several processes, at the next of every
        ``BUDGET_CHECK_BATCHES`` steps), validates what it has and keeps the best weights; the
        manifest says so.
    early_stopping_patience: stop when the validation hit rate has not improved for this
        many epochs and keep the best epoch's weights (0: off, train all epochs). The
        validation set is the last interaction of up to ``validation_users`` sampled users,
        held out of training; the metric is factorized top-``validation_k`` accuracy.
    device: ``auto`` (the GPU when present), ``cpu`` or ``cuda``.
    user_tower: the query tower, a name in ``towers/registry.py``. ``id``: the user's id and
        features; ``sequence``: causal self-attention over the user's last ``history_length``
        items (SASRec-style); ``pooled``: a recency-weighted average of them. The history
        towers train on every position of every history (next-item prediction) and need no
        user-id table.
    history_length: items of a history the history towers read (the most recent ones).
    attention_blocks, attention_heads, dropout: the sequence tower's shape (dropout 0.1: on
        MovieLens-1M 0.1 beat 0.2 and 0.5, BENCHMARKS.md, issue 30).
    feed_forward_mult: the sequence tower's feed-forward layers have this many times the
        tower's width in hidden units (SASRec's: 1).
    gated_blocks: the sequence tower's attention and feed-forward outputs are each scaled by a
        sigmoid gate read from their input before the residual adds them, and the feed-forward
        layers are SwiGLUs (the LiGR block of eSASRec); off: SASRec's block. Gated, with
        ``feed_forward_mult`` 4: the defaults, chosen on MovieLens-1M (BENCHMARKS.md, issue 30).
    future_targets, future_weight: the history towers' positions predict the next item and,
        with ``future_targets`` > 1, the items after it up to that many, each weighted
        ``future_weight`` against the next item's 1, in one softmax. A query read from a history
        that misses the user's latest items (a log that lags, a day-old history at serving) is
        asked for items further ahead than the next.
    replay: continuing a parent model (``towers/warm.py``), train only on what changed since
        the parent's training data and this fraction of the rest (``warm.replay``); None: the
        whole log. Ignored when training from scratch.
    full_softmax_items: history towers score every catalog item for every position when the
        catalog has at most this many items (30,000: with 20k items the full softmax scored
        HR@10 0.146 against the sampled one's 0.130, with 50k 0.100 against 0.104 at an eighth
        of the time, BENCHMARKS.md, issue 31); above it, the softmax over the batch's distinct
        items and ``mixed_negatives`` uniform draws, with the logQ correction.
    uniform_negatives: history towers only; when > 0, each position's softmax is over its next
        item and this many distinct items drawn uniformly from the catalog for the batch
        (shared by its positions), whatever the catalog's size: ``P x uniform_negatives``
        scores per batch instead of ``P x catalog``. 0 (the default): as ``full_softmax_items``
        says. Not with ``future_targets`` > 1.
    earlier_windows: history towers only; a history longer than ``history_length`` also trains
        on the windows before its last one, so every item of it is a target once (False: the
        last window only, as SASRec; on MovieLens-1M that leaves a third of the items out).
    exclude_history: history towers only; which of the user's own items leave each position's
        softmax (neither negatives nor in its normaliser): ``off``; ``seen``, the items up to the
        position (those that serving and the evaluation leave out of the ranking anyway);
        ``window``, every item of the training window but the position's target. None (the
        default): the tower's value (the sequence tower: ``seen``, which gained on MovieLens-1M,
        BENCHMARKS.md, issue 30; the others ``off``). A position's own targets are never left out.
    """

    vector_dim: int | None = None
    feature_dim: int | None = None
    use_features: bool = True
    hidden_dims: tuple[int, ...] = ()
    temperature: float = 0.1
    learn_temperature: bool | None = None
    similarity: str = "cosine"
    logq_correction: bool | None = None
    prior_weight: float = 0.85
    num_hard_negatives: int | None = None
    mixed_negatives: int = 0
    optimizer: str = "adam"
    sparse_embeddings: str = "auto"
    epochs: int | None = None
    time_budget: float | None = None
    learning_rate_schedule: str = "constant"
    ema_decay: float | None = None
    early_stopping_patience: int = 0
    validation_users: int = 1000
    validation_k: int = 50
    device: str = "auto"
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    user_tower: str = DEFAULT_USER_TOWER
    history_length: int = 200
    attention_blocks: int = 2
    attention_heads: int = 1
    feed_forward_mult: int = 4
    gated_blocks: bool = True
    dropout: float = 0.1
    full_softmax_items: int = 30_000
    future_targets: int = 1
    future_weight: float = 0.5
    uniform_negatives: int = 0
    earlier_windows: bool = False
    exclude_history: str | None = None
    replay: float | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name))
        kind = tower_kind(self.user_tower)
        for name, value in kind.defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.learn_temperature is None:
            object.__setattr__(self, "learn_temperature", False)
        if self.ema_decay is None:
            object.__setattr__(self, "ema_decay", 0.0)
        if self.exclude_history is None:
            object.__setattr__(self, "exclude_history", "off")
        if self.feature_dim is None and self.vector_dim is not None:
            object.__setattr__(self, "feature_dim", self.vector_dim - 1)
        if self.vector_dim < 2:
            raise ConfigError(f"vector_dim must be at least 2, got {self.vector_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping_patience < 0 or self.validation_users < 1 or self.validation_k < 1:
            raise ConfigError("early_stopping_patience must be >= 0, validation_users and validation_k >= 1")
        if self.similarity not in ("cosine", "dot"):
            raise ConfigError(f"similarity must be 'cosine' or 'dot', got {self.similarity!r}")
        if self.learning_rate_schedule not in ("constant", "cosine"):
            raise ConfigError("learning_rate_schedule must be 'constant' or 'cosine', "
                              f"got {self.learning_rate_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.sparse_embeddings not in ("auto", "always", "never"):
            raise ConfigError(f"sparse_embeddings must be 'auto', 'always' or 'never', got {self.sparse_embeddings!r}")
        if self.optimizer not in ("adam", "adagrad"):
            raise ConfigError(f"optimizer must be 'adam' or 'adagrad', got {self.optimizer!r}")
        if self.feature_dim < 1 or self.mixed_negatives < 0:
            raise ConfigError(f"feature_dim must be >= 1 and mixed_negatives >= 0, got {self.feature_dim} "
                              f"and {self.mixed_negatives}")
        if self.num_hard_negatives is not None and self.num_hard_negatives < 1:
            raise ConfigError(f"num_hard_negatives must be at least 1 when set, got {self.num_hard_negatives}")
        if self.history_length < 1 or self.attention_blocks < 0 or self.attention_heads < 1:
            raise ConfigError("history_length and attention_heads must be >= 1 and attention_blocks >= 0, got "
                              f"{self.history_length}, {self.attention_heads} and {self.attention_blocks}")
        if self.replay is not None and not 0 <= self.replay <= 1:
            raise ConfigError(f"replay must be a fraction between 0 and 1, got {self.replay}")
        if self.future_targets < 1 or not self.future_weight >= 0:
            raise ConfigError(f"future_targets must be >= 1 and future_weight >= 0, got {self.future_targets} "
                              f"and {self.future_weight}")
        if self.uniform_negatives < 0 or (self.uniform_negatives and self.future_targets > 1):
            raise ConfigError(f"uniform_negatives must be >= 0, and 0 with future_targets > 1; got "
                              f"{self.uniform_negatives} with future_targets {self.future_targets}")
        if self.exclude_history not in ("off", "seen", "window"):
            raise ConfigError(f"exclude_history must be 'off', 'seen' or 'window', got {self.exclude_history!r}")
        if self.feed_forward_mult < 1:
            raise ConfigError(f"feed_forward_mult must be >= 1, got {self.feed_forward_mult}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(width < 1 for width in self.hidden_dims):
            raise ConfigError(f"hidden_dims must be positive widths, got {list(self.hidden_dims)}")
        if kind.check is not None:
            kind.check(self)

    def sparse(self, rows: int) -> bool:
        """Whether an embedding table with ``rows`` rows gets sparse gradients."""
        return self.sparse_embeddings == "always" or (self.sparse_embeddings == "auto" and rows > SPARSE_ROWS)

    @property
    def tower_dim(self) -> int:
        return self.vector_dim - 1

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden_dims": list(self.hidden_dims)}

    @classmethod
    def for_tower(cls, user_tower: str, **settings) -> TowerConfig:
        """The defaults of the ``user_tower`` kind (its registry entry), then ``settings``."""
        return cls.from_dict({**settings, "user_tower": user_tower})

    @classmethod
    def from_dict(cls, values: dict) -> TowerConfig:
        """Settings by name; what ``values`` leaves out takes the defaults of its
        ``user_tower`` (default ``DEFAULT_USER_TOWER``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model settings {unknown}; known: {sorted(known)}")
        if "hidden_dims" in values:
            values = {**values, "hidden_dims": tuple(values["hidden_dims"])}
        return cls(**values)


_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}


@functools.cache
def _setting_type(name: str) -> tuple[type, bool]:
    """A setting's type (bool, int, float, str or tuple, the tuple's items whole numbers) and
    whether it may be None (the default chosen elsewhere)."""
    hint = typing.get_type_hints(TowerConfig)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        return kinds[0], True
    return typing.get_origin(hint) or hint, False


def _words(name: str) -> str:
    kind, optional = _setting_type(name)
    words = "comma-separated whole numbers" if kind is tuple else _WORDS[kind]
    return words + (" or none (the default)" if optional else "")


def _check_type(name: str, value: object) -> None:
    kind, optional = _setting_type(name)
    if value is None and optional:
        return
    if kind is tuple:
        fits = isinstance(value, tuple) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                for v in value)
    elif kind is bool:
        fits = isinstance(value, bool)
    elif kind is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        fits = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        fits = isinstance(value, kind)
    if not fits:
        raise ConfigError(f"model setting {name} must be {_words(name)}, got {value!r}")


def parse_setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` (a command line's ``--set``) as a TowerConfig setting and its value, read
    as the setting's type: true or false, a whole number, a number, a word, none where the
    setting may be left to its default, comma-separated widths for hidden_dims."""
    name, equals, value = text.partition("=")
    name = name.strip()
    known = sorted(f.name for f in fields(TowerConfig))
    if not equals or not name:
        raise ConfigError(f"expected NAME=VALUE, such as attention_blocks=3, got {text!r}")
    if name not in known:
        raise ConfigError(f"{name!r} is not a model setting; known: {', '.join(known)}")
    kind, optional = _setting_type(name)
    word = value.strip()
    if optional and word.lower() in ("none", ""):
        return name, None
    try:
        if kind is bool:
            return name, {"true": True, "yes": True, "on": True, "1": True,
                          "false": False, "no": False, "off": False, "0": False}[word.lower()]
        if kind is tuple:
            return name, tuple(int(part) for part in word.split(",") if part.strip())
        return name, kind(word)
    except (KeyError, ValueError):
        raise ConfigError(f"{name} takes {_words(name)}, got {value!r}") from None
