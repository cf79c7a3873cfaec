"""Index parameters as pure functions: chosen from the data's shape, checked, and the search
settings tuned against a recall function. The store only applies what it is given.

Two index types, both inverted lists of quantized vectors:

- ``IVF_PQ``: product quantization with 8-bit codes, scored by Milvus' scalar loop;
- ``SCANN``: Milvus' fast-scan IVF (4-bit codes, two dimensions per code, scored with SIMD
  shuffles, as FAISS' ``IndexIVFPQFastScan``), with the raw vectors kept beside the codes so
  that the best ``reorder_k`` candidates of a search are re-scored exactly before the top
  ``limit`` are returned (as FAISS' ``IndexRefineFlat``). The coarse codes cost recall; the
  exact re-ranking gives it back, so its recall is bounded by the lists searched (nprobe),
  not by the codes. Milvus builds SCANN only on an even dimension ("dimension must be able
  to be divided by 2"); towerbridge's vectors are ``[embedding, prior]``, odd for even
  embeddings, so a SCANN version stores one zero dimension more, first (``pad_dims`` in its
  record; the prior stays last), and its searches prepend a zero to each query: inner
  products are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from towerbridge import defaults
from towerbridge.errors import ConfigError

METRIC = "IP"
MAX_NLIST = 65536
PLATEAU = 0.005  # nprobe tuning stops when doubling nprobe gains less recall than this
# A tuned IVF_PQ search reads at least this many items' codes (every list of a smaller catalog):
# so few cost a fraction of a millisecond a query whatever the catalog's size, while stopping at
# the target recall there gave up quality (figures in BENCHMARKS.md, issue 30).
MIN_SCANNED = 4096
INDEX_TYPES = ("IVF_PQ", "SCANN")
# What a version may ask for: one of INDEX_TYPES, or AUTO: IVF_PQ, and SCANN where IVF_PQ's tuned
# search falls short of the target recall (``auto_index``).
AUTO = "AUTO"
INDEX_CHOICES = (AUTO, *INDEX_TYPES)
# AUTO goes straight to SCANN when the version it replaces fell back from IVF_PQ at a catalog no
# larger than this many times today's: IVF_PQ's recall falls as the catalog grows (0.77 at 1M
# items, BENCHMARKS.md), so it would fall short again, and building it costs a third of a rebuild.
FALLBACK_REMEMBERED = 1.25
# SCANN's re-ranking: tuning tries reorder_k = k times each of these (k: the tuning's top k),
# the widest while it tunes nprobe, then the narrowest that keeps the recall. Where 4-bit codes
# cannot separate many near-equal scores, a short list misses true top-k items whatever the
# nprobe (BENCHMARKS.md, "Search at the limit"); re-scoring 64·k exactly costs little beside
# scanning the lists.
REORDER_FACTORS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SearchParams:
    """What a search of one version sends to Milvus: nprobe, and for SCANN reorder_k; pad:
    zero dimensions put before each query (the version's ``pad_dims``). A version's own:
    ``VersionRecord.search_params()``."""

    nprobe: int
    reorder_k: int | None = None
    pad: int = 0
    nlist: int | None = None

    def for_limit(self, limit: int) -> dict:
        """Milvus' search ``params`` for a search of ``limit`` hits (SCANN re-ranks at least
        as many candidates as it returns, and a search wider than the tuned re-ranking probes
        as many more lists, up to ``nlist``: the tuned lists may hold fewer items than it asks for)."""
        params: dict = {"nprobe": int(self.nprobe)}
        if self.reorder_k is not None:
            params["reorder_k"] = max(int(self.reorder_k), int(limit))
            if limit > self.reorder_k and self.nlist:
                params["nprobe"] = min(int(self.nlist), math.ceil(self.nprobe * limit / self.reorder_k))
        return params

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query vectors shaped as the version stores its vectors (``pad`` zeros first)."""
        return pad_vectors(vectors, self.pad)

    def describe(self) -> str:
        return f"nprobe {self.nprobe}" + ("" if self.reorder_k is None else f", reorder_k {self.reorder_k}")


@dataclass(frozen=True)
class IvfPqParams:
    """IVF_PQ build parameters and the nprobe used at search time."""

    index_type: ClassVar[str] = "IVF_PQ"
    nlist: int
    m: int
    nbits: int = 8
    nprobe: int = 16

    def check(self, dim: int, n_rows: int) -> None:
        """Raise ConfigError with every problem found, before anything is built."""
        problems = []
        if not 1 <= self.nlist <= min(MAX_NLIST, n_rows):
            problems.append(f"nlist={self.nlist} must be between 1 and min({MAX_NLIST}, rows={n_rows})")
        if self.m < 1 or dim % self.m:
            problems.append(f"m={self.m} must divide the vector dimension {dim}")
        if not 1 <= self.nbits <= 16:
            problems.append(f"nbits={self.nbits} must be between 1 and 16")
        elif n_rows < 2**self.nbits:
            problems.append(f"nbits={self.nbits} needs at least {2**self.nbits} rows to train, got {n_rows}")
        if not 1 <= self.nprobe <= self.nlist:
            problems.append(f"nprobe={self.nprobe} must be between 1 and nlist={self.nlist}")
        if problems:
            raise ConfigError("invalid IVF_PQ parameters: " + "; ".join(problems))

    def build_params(self) -> dict:
        return {"nlist": self.nlist, "m": self.m, "nbits": self.nbits}

    def codes(self) -> str:
        return f"m {self.m}, {self.nbits} bits"


@dataclass(frozen=True)
class ScannParams:
    """SCANN build parameters (its lists; the codes are fixed: 4 bits per two dimensions)
    and the search settings: nprobe, and reorder_k, the candidates re-scored exactly."""

    index_type: ClassVar[str] = "SCANN"
    nlist: int
    nprobe: int = 16
    reorder_k: int = 100 * REORDER_FACTORS[-1]

    def check(self, dim: int, n_rows: int) -> None:
        """Raise ConfigError with every problem found, before anything is built."""
        problems = []
        if not 1 <= self.nlist <= min(MAX_NLIST, n_rows):
            problems.append(f"nlist={self.nlist} must be between 1 and min({MAX_NLIST}, rows={n_rows})")
        if n_rows < 256:
            problems.append(f"SCANN needs at least 256 rows to train its codes, got {n_rows}")
        if not 1 <= self.nprobe <= self.nlist:
            problems.append(f"nprobe={self.nprobe} must be between 1 and nlist={self.nlist}")
        if self.reorder_k < 1:
            problems.append(f"reorder_k={self.reorder_k} must be at least 1")
        if problems:
            raise ConfigError("invalid SCANN parameters: " + "; ".join(problems))

    def build_params(self) -> dict:
        # Milvus 2.3.5 refuses SCANN's with_raw_data when it is given ("type conflict in json":
        # parameters reach the index as strings); left out, it is true: raw vectors are kept.
        return {"nlist": self.nlist}

    def codes(self) -> str:
        return "4-bit fast-scan codes"


IndexParams = IvfPqParams | ScannParams


def pad_dims(params: IndexParams, dim: int) -> int:
    """Zero dimensions a version of ``dim``-dimensional vectors stores beyond them: 1 for SCANN
    on an odd dimension (Milvus builds it only on even ones), else 0."""
    return int(isinstance(params, ScannParams) and dim % 2 == 1)


def pad_vectors(vectors: np.ndarray, pad: int) -> np.ndarray:
    """``vectors`` (one per row, or one vector) with ``pad`` zeros before each. First, not
    last: the last coordinate stays the popularity prior, as readers of the vectors expect."""
    if not pad:
        return vectors
    widths = [(0, 0)] * (np.ndim(vectors) - 1) + [(pad, 0)]
    return np.pad(np.asarray(vectors, dtype=np.float32), widths)


def choose_ivf_pq(n_rows: int, dim: int) -> IvfPqParams:
    """Defaults from the data's shape.

    nlist ≈ 4·√N, but at most N/39 so k-means has ~39 points per list (faiss' rule of thumb);
    m: one sub-quantizer per dimension (m = dim), an 8-bit learned code per coordinate: on
       MovieLens 100K vectors it gave recall@100 0.984 against 0.952 for two dimensions per
       code, at nprobe 10 of 43, for 32 bytes a vector instead of 16 (float32: 128);
    nbits: 8, fewer only when there are not 256 rows to train the codebooks;
    nprobe: a quarter of the lists, at least 8 (or all of them when there are fewer).
    """
    if n_rows < 2:
        raise ConfigError(f"an IVF_PQ index needs at least 2 rows, got {n_rows}")
    nlist = max(1, min(round(4 * math.sqrt(n_rows)), n_rows // 39, MAX_NLIST))
    m = dim
    nbits = min(8, int(math.log2(n_rows)))
    nprobe = min(nlist, max(8, nlist // 4))
    return IvfPqParams(nlist=nlist, m=m, nbits=nbits, nprobe=nprobe)


def choose_index(n_rows: int, dim: int, overrides: dict | None = None) -> IndexParams:
    """The index a version gets: ``overrides["index_type"]`` (``AUTO``, the default, starts
    with ``IVF_PQ``; or ``IVF_PQ`` or ``SCANN``; any case), its parameters chosen from the data,
    then the other overrides. Checked before anything is built."""
    overrides = dict(overrides or {})
    index_type = str(overrides.pop("index_type", None) or AUTO).upper()
    if index_type not in INDEX_CHOICES:
        raise ConfigError(f"index type {index_type!r} is not one towerbridge builds; choose one of "
                          f"{', '.join(t.lower() for t in INDEX_CHOICES)}")
    if index_type == AUTO:
        index_type = "IVF_PQ"
    chosen = choose_ivf_pq(n_rows, dim)
    if index_type == "SCANN":
        chosen = ScannParams(nlist=chosen.nlist, nprobe=chosen.nprobe)
    allowed = set(asdict(chosen))
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a parameter of {index_type} (it takes "
                          f"{', '.join(sorted(allowed))})")
    params = type(chosen)(**{**asdict(chosen), **overrides})
    if "nprobe" not in overrides:  # a smaller nlist bounds the default
        params = type(params)(**{**asdict(params), "nprobe": min(params.nprobe, params.nlist)})
    params.check(dim, n_rows)
    return params


def auto_index(overrides: dict | None) -> bool:
    """Whether the index is left to towerbridge (``AUTO``, or no type given): IVF_PQ, and SCANN
    where IVF_PQ falls short of the target. Setting IVF_PQ's codes (``m``, ``nbits``) chooses it."""
    overrides = overrides or {}
    return str(overrides.get("index_type") or AUTO).upper() == AUTO and not {"m", "nbits"} & set(overrides)


def fallback_index(n_rows: int, dim: int, overrides: dict | None = None) -> ScannParams | None:
    """The SCANN index an ``AUTO`` version falls back to (the lists as ``overrides`` set them);
    None where SCANN cannot be built (fewer than 256 rows)."""
    if n_rows < 256:
        return None
    lists = {key: value for key, value in (overrides or {}).items() if key in ("nlist", "nprobe")}
    return choose_index(n_rows, dim, {**lists, "index_type": "SCANN"})


@dataclass(frozen=True)
class Fallback:
    """Why an ``AUTO`` version has SCANN: IVF_PQ's tuned search reached ``recall`` (at
    ``nprobe``) on ``items`` items, short of ``target``; ``seen_in``: the earlier version
    where that was measured, when this one went straight to SCANN (None: measured here)."""

    recall: float
    nprobe: int
    items: int
    target: float
    seen_in: str | None = None

    def describe(self) -> str:
        measured = (f"IVF_PQ reached recall@100 {self.recall:.3f} (nprobe {self.nprobe}) on {self.items:,} items, "
                    f"short of the target {self.target:g}")
        if self.seen_in:
            return f"SCANN, as for {self.seen_in} ({measured})"
        return f"SCANN: {measured}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Fallback:
        return cls(recall=float(values["recall"]), nprobe=int(values["nprobe"]), items=int(values["items"]),
                   target=float(values["target"]), seen_in=values.get("seen_in"))

    def still_applies(self, n_rows: int, target: float) -> bool:
        """Whether IVF_PQ would fall short again on ``n_rows`` items (``FALLBACK_REMEMBERED``) of
        a ``target`` recall at least as high as the one it missed."""
        return self.items <= FALLBACK_REMEMBERED * n_rows and target >= self.target


def min_nprobe(nlist: int, n_rows: int) -> int:
    """The fewest lists a tuned search probes: enough to read ``MIN_SCANNED`` of ``n_rows``
    items' codes on average (every list when the catalog is no larger)."""
    if n_rows <= MIN_SCANNED:
        return nlist
    return max(1, min(nlist, math.ceil(nlist * MIN_SCANNED / n_rows)))


def tune_nprobe(params: IndexParams, recall_at: Callable[[int], float], target: float = defaults.TARGET_RECALL,
                plateau: float = PLATEAU, least: int = 1) -> tuple[int, float]:
    """The smallest nprobe (``least``, then the powers of two from twice it, then nlist) whose
    ``recall_at(nprobe)`` reaches ``target``. When doubling nprobe gains less than ``plateau``
    of recall, the codes' precision, not the lists searched, is what limits recall: the smaller
    nprobe is kept (searching every list would cost up to nlist/nprobe times as much for
    nothing). nlist when recall still rises at the end. Returns ``(nprobe, recall)``."""
    previous: tuple[int, float] | None = None
    recall = 0.0
    least = min(max(1, least), params.nlist)  # each step at least doubles: the plateau is per doubling
    ladder = {least, params.nlist} | {2**i for i in range(17) if 2 * least <= 2**i < params.nlist}
    for nprobe in sorted(ladder):
        recall = recall_at(nprobe)
        if recall >= target:
            return nprobe, recall
        if previous is not None and recall - previous[1] < plateau:
            return previous
        previous = nprobe, recall
    return params.nlist, recall


def tune_search(params: IndexParams, recall_at: Callable[[SearchParams], float], k: int,
                target: float = defaults.TARGET_RECALL, plateau: float = PLATEAU,
                least: int = 1) -> tuple[SearchParams, float]:
    """The cheapest search settings reaching ``target`` recall: nprobe as ``tune_nprobe`` (for
    IVF_PQ at least ``least``; SCANN's tuning is as it was, the floor having been measured on
    IVF_PQ only);
    for SCANN first with the widest re-ranking (``k`` times the last of REORDER_FACTORS,
    so that the codes do not limit recall), then the narrowest reorder_k that keeps the
    target (or, short of it, stays within ``plateau`` of the widest). Returns ``(settings, recall)``."""
    if isinstance(params, IvfPqParams):
        nprobe, recall = tune_nprobe(params, lambda n: recall_at(SearchParams(n)), target, plateau, least)
        return SearchParams(nprobe), recall
    widest = k * REORDER_FACTORS[-1]
    nprobe, recall = tune_nprobe(params, lambda n: recall_at(SearchParams(n, widest)), target, plateau)
    enough = target if recall >= target else recall - plateau
    for factor in REORDER_FACTORS[:-1]:
        narrower = recall_at(SearchParams(nprobe, k * factor))
        if narrower >= enough:
            return SearchParams(nprobe, k * factor), narrower
    return SearchParams(nprobe, widest), recall


def params_record(params: IndexParams) -> dict:
    return {"index_type": params.index_type, "metric_type": METRIC, "params": asdict(params)}
