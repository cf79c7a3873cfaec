import pytest

from towerbridge.errors import ConfigError
from towerbridge.milvus.index import IvfPqParams, choose_ivf_pq, tune_nprobe
from towerbridge.milvus.schema import version_name


@pytest.mark.parametrize("rows, dim, expected", [
    # nlist = min(4·sqrt(N), N // 39); m = dim; nbits 8 once N >= 256; nprobe = max(8, nlist / 4) <= nlist
    (4000, 32, IvfPqParams(nlist=102, m=32, nbits=8, nprobe=25)),
    (1_000_000, 64, IvfPqParams(nlist=4000, m=64, nbits=8, nprobe=1000)),
    (500, 32, IvfPqParams(nlist=12, m=32, nbits=8, nprobe=8)),
    (100, 33, IvfPqParams(nlist=2, m=33, nbits=6, nprobe=2)),
])
def test_defaults_follow_the_data(rows, dim, expected):
    chosen = choose_ivf_pq(rows, dim)
    assert chosen == expected
    chosen.check(dim, rows)


@pytest.mark.parametrize("params, message", [
    (IvfPqParams(nlist=16, m=5), "m=5 must divide the vector dimension 32"),
    (IvfPqParams(nlist=0, m=16), "nlist=0 must be between 1"),
    (IvfPqParams(nlist=16, m=16, nbits=9), "nbits=9 needs at least 512 rows"),
    (IvfPqParams(nlist=16, m=16, nprobe=17), "nprobe=17 must be between 1 and nlist=16"),
])
def test_bad_params_are_refused_before_building(params, message):
    with pytest.raises(ConfigError, match=message):
        params.check(32, 300)


def test_version_names_are_valid_collection_names():
    name = version_name("towerbridge_items", "20261128-061603-8be597")
    assert name.startswith("towerbridge_items_v") and name.endswith("_8be597")
    assert name.replace("_", "").isalnum()


@pytest.mark.parametrize("curve, expected", [
    # recall by nprobe (powers of two up to nlist 64); tuning asks in that order and stops early
    ({1: 0.5, 2: 0.7, 4: 0.85, 8: 0.93, 16: 0.96, 32: 0.99, 64: 1.0}, (16, 0.96)),   # target reached
    ({1: 0.4, 2: 0.6, 4: 0.70, 8: 0.72, 16: 0.73, 32: 0.73, 64: 0.73}, (16, 0.73)),  # codes limit recall
    ({1: 0.1, 2: 0.2, 4: 0.30, 8: 0.40, 16: 0.50, 32: 0.60, 64: 0.70}, (64, 0.70)),  # still rising: all lists
])
def test_nprobe_tuning_stops_at_the_target_or_where_recall_stops_rising(curve, expected):
    asked = []

    def recall_at(nprobe):
        asked.append(nprobe)
        return curve[nprobe]

    assert tune_nprobe(IvfPqParams(nlist=64, m=8, nbits=8, nprobe=16), recall_at) == expected
    assert asked == sorted(asked) and asked[-1] <= 64
