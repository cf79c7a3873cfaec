"""Reading a flat search answer as columns, on hand-made answers (no server)."""

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException

from towerbridge.milvus.answers import columns, columns_from_flat


def test_short_answers_are_padded_per_query():
    ids, scores = columns_from_flat(np.array([7, 3, 9], dtype=np.int64), np.array([0.9, 0.5, 0.8], dtype=np.float32),
                                    np.array([2, 0, 1]), nq=3, limit=2)
    assert ids.tolist() == [[7, 3], [-1, -1], [9, -1]]
    assert np.isfinite(scores).tolist() == [[True, True], [False, False], [True, False]]
    assert scores[2, 0] == pytest.approx(0.8)


def test_string_ids_pad_with_none_and_parsed_lists_read_the_same():
    ids, _ = columns([["a", "b"], ["c"]], [[0.3, 0.2], [0.1]], nq=2, limit=2)
    assert ids.tolist() == [["a", "b"], ["c", None]]


def test_an_answer_for_other_queries_is_refused():
    with pytest.raises(MilvusException, match="search answered 1 queries with 2 hits, expected 2 queries"):
        columns_from_flat(np.array([1, 2]), np.array([0.1, 0.2], dtype=np.float32), np.array([2]), nq=2, limit=2)
