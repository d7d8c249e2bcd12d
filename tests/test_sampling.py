"""Step-indexed sampling: every sample once per pass, and batch t rebuilt identically from (seed, step)."""
import numpy as np

from finessl_lab.data.sampling import LABELED, UNLABELED, step_positions


def test_each_pass_is_a_permutation():
    n, b = 10, 4
    drawn = np.concatenate([step_positions(n, b, s, seed=3, stream=LABELED) for s in range(5)])  # 20 = 2 passes
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))


def test_pure_function_of_seed_stream_step():
    a = step_positions(100, 32, 7, seed=1, stream=UNLABELED)
    assert np.array_equal(a, step_positions(100, 32, 7, seed=1, stream=UNLABELED))
    assert not np.array_equal(a, step_positions(100, 32, 7, seed=2, stream=UNLABELED))
    assert not np.array_equal(a, step_positions(100, 32, 7, seed=1, stream=LABELED))


def test_batch_larger_than_set_spans_passes():
    out = step_positions(3, 7, 0, seed=0, stream=LABELED)
    assert len(out) == 7 and set(out) == {0, 1, 2}
