import numpy as np
import pytest

from towerbridge.errors import ConfigError
from towerbridge.milvus.index import (
    Fallback,
    IvfPqParams,
    ScannParams,
    SearchParams,
    auto_index,
    choose_index,
    choose_ivf_pq,
    fallback_index,
    min_nprobe,
    pad_dims,
    pad_vectors,
    tune_nprobe,
    tune_search,
)
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


@pytest.mark.parametrize("nlist, rows, expected", [
    (87, 3416, 87),          # MovieLens-1M's catalog: fewer items than MIN_SCANNED, every list
    (87, 4096, 87),
    (256, 10_000, 105),      # 256 x 4096 / 10,000 = 104.9 lists: 4,096 items' codes on average
    (64, 10_000, 27),        # 26.2: rounded up, never fewer codes than MIN_SCANNED
    (4000, 1_000_000, 17),   # 16.4: a large catalog is tuned as before (its tuned nprobe is 16 or more)
    (1, 50_000, 1),
])
def test_a_tuned_search_reads_at_least_a_few_thousand_codes(nlist, rows, expected):
    assert min_nprobe(nlist, rows) == expected


def test_nprobe_tuning_starts_at_the_least_lists_it_is_given():
    curve = {1: 0.5, 2: 0.7, 4: 0.85, 8: 0.93, 16: 0.96, 20: 0.97, 32: 0.99, 40: 0.995, 64: 1.0}
    asked = []

    def recall_at(nprobe):
        asked.append(nprobe)
        return curve[nprobe]

    params = IvfPqParams(nlist=64, m=8, nbits=8, nprobe=16)
    assert tune_nprobe(params, recall_at, least=20) == (20, 0.97)  # the target is met above it: kept
    assert asked == [20]
    asked.clear()
    assert tune_nprobe(params, recall_at, target=0.999, least=20) == (64, 1.0)  # then 40 (no power of two
    assert asked == [20, 64]                                                    # below twice 20), 64 (nlist)
    asked.clear()
    assert tune_nprobe(params, recall_at, least=64) == (64, 1.0) and asked == [64]
    assert tune_nprobe(params, recall_at, least=500) == (64, 1.0)  # never beyond nlist
    # the plateau is judged per doubling: a first step of 30 -> 32 that gains little does not stop it
    rising = {30: 0.90, 32: 0.901, 64: 0.96, 128: 0.97}
    assert tune_nprobe(IvfPqParams(nlist=128, m=8, nbits=8, nprobe=16), rising.__getitem__, least=30) == (64, 0.96)
    ivf = tune_search(params, lambda chosen: curve[chosen.nprobe], k=100, least=40)
    scann = tune_search(ScannParams(nlist=64), lambda chosen: curve[chosen.nprobe], k=100, least=40)
    assert ivf == (SearchParams(40), 0.995) and scann == (SearchParams(16, 100), 0.96)  # SCANN: as before


def test_scann_is_chosen_with_the_same_lists_and_any_case():
    assert choose_index(4000, 32, {"index_type": "scann"}) == ScannParams(nlist=102, nprobe=25, reorder_k=6400)
    assert choose_index(4000, 32, {"index_type": "SCANN", "nlist": 40}) == ScannParams(nlist=40, nprobe=25)
    assert choose_index(4000, 32) == choose_ivf_pq(4000, 32) == choose_index(4000, 32, {"index_type": "auto"})


def test_auto_is_ivf_pq_first_unless_its_codes_are_chosen():
    assert auto_index(None) and auto_index({"index_type": "auto"}) and auto_index({"nlist": 40})
    assert not auto_index({"index_type": "IVF_PQ"}) and not auto_index({"index_type": "scann"})
    assert not auto_index({"m": 8}) and not auto_index({"nbits": 4})
    assert fallback_index(4000, 32, {"nlist": 40, "index_type": "AUTO"}) == ScannParams(nlist=40, nprobe=25)
    assert fallback_index(200, 32) is None  # SCANN needs 256 rows


def test_a_fallback_is_remembered_for_catalogs_about_its_size():
    fallback = Fallback(recall=0.77, nprobe=64, items=1_000_000, target=0.95)
    assert fallback.still_applies(1_020_000, 0.95) and fallback.still_applies(800_000, 0.97)
    assert not fallback.still_applies(799_999, 0.95)  # a catalog a fifth smaller: IVF_PQ is tried again
    assert not fallback.still_applies(1_000_000, 0.9)  # a lower target: IVF_PQ may meet it
    assert Fallback.from_dict(fallback.to_dict()) == fallback
    assert fallback.describe() == ("SCANN: IVF_PQ reached recall@100 0.770 (nprobe 64) on 1,000,000 items, "
                                   "short of the target 0.95")


@pytest.mark.parametrize("overrides, message", [
    ({"index_type": "hnsw"}, "index type 'HNSW' is not one towerbridge builds; choose one of auto, ivf_pq, scann"),
    ({"index_type": "scann", "m": 8}, r"m: not a parameter of SCANN \(it takes nlist, nprobe, reorder_k\)"),
    ({"mm": 8}, r"mm: not a parameter of IVF_PQ \(it takes m, nbits, nlist, nprobe\)"),
    ({"index_type": "scann", "nlist": 200, "nprobe": 300}, "nprobe=300 must be between 1 and nlist=200"),
])
def test_bad_index_choices_are_refused_with_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=message):
        choose_index(4000, 32, overrides)


def test_scann_needs_rows_to_train_its_codes():
    with pytest.raises(ConfigError, match="SCANN needs at least 256 rows to train its codes, got 200"):
        choose_index(200, 32, {"index_type": "scann"})


def test_search_settings_re_rank_at_least_as_many_as_asked_for():
    assert SearchParams(16).for_limit(100) == {"nprobe": 16}
    assert SearchParams(16, 200).for_limit(100) == {"nprobe": 16, "reorder_k": 200}
    assert SearchParams(16, 200).for_limit(500) == {"nprobe": 16, "reorder_k": 500}


def test_padding_goes_first_so_the_prior_stays_last():
    vectors = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    assert SearchParams(8, 100, pad=1).queries(vectors).tolist() == [[0, 1, 2, 3], [0, 4, 5, 6]]
    assert SearchParams(8).queries(vectors) is vectors
    assert pad_vectors(vectors[0], 1).tolist() == [0, 1, 2, 3]
    assert (pad_dims(ScannParams(nlist=8), 65), pad_dims(ScannParams(nlist=8), 64),
            pad_dims(IvfPqParams(nlist=8, m=5), 65)) == (1, 0, 0)


def test_scann_tuning_finds_the_lists_then_the_narrowest_re_ranking():
    asked = []

    def recall_at(chosen):  # lists searched bound recall; re-ranking fewer than 4k candidates costs some
        asked.append(chosen)
        by_lists = {1: 0.5, 2: 0.7, 4: 0.85, 8: 0.93, 16: 0.97, 32: 0.99, 64: 1.0}[chosen.nprobe]
        return by_lists - {100: 0.15, 200: 0.1, 400: 0.05, 800: 0.03, 1600: 0.0, 3200: 0.0, 6400: 0.0}[chosen.reorder_k]

    assert tune_search(ScannParams(nlist=64), recall_at, k=100) == (SearchParams(16, 1600), 0.97)
    assert [c.reorder_k for c in asked] == [6400] * 5 + [100, 200, 400, 800, 1600]


def test_scann_tuning_short_of_the_target_keeps_the_best_it_found():
    def recall_at(chosen):
        return min(0.90, chosen.nprobe / 16) - (0.01 if chosen.reorder_k == 100 else 0.0)

    # recall stops rising at nprobe 16 (0.90); re-ranking 100 loses 0.01 > plateau, 200 keeps it
    assert tune_search(ScannParams(nlist=64), recall_at, k=100) == (SearchParams(16, 200), 0.90)


def test_ivf_pq_tuning_is_nprobe_tuning():
    curve = {1: 0.5, 2: 0.7, 4: 0.85, 8: 0.93, 16: 0.96, 32: 0.99, 64: 1.0}
    assert tune_search(IvfPqParams(nlist=64, m=8), lambda chosen: curve[chosen.nprobe], k=100) == \
        (SearchParams(16), 0.96)
