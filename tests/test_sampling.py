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


def _reference(n, b, step, seed, stream):  # the pre-cache sampler: permute all n every step
    from finessl_lab.data.sampling import pass_permutation
    start = step * b
    return np.array([pass_permutation(n, seed, stream, p // n)[p % n] for p in range(start, start + b)])


def test_cached_permutations_give_the_uncached_positions():
    from finessl_lab.data.sampling import PERMUTATIONS, pass_permutation, replay_positions
    PERMUTATIONS.clear()
    for n, b in ((10, 4), (3, 7), (1000, 64), (97, 97)):
        for step in (0, 1, 2, 5, 17, 100):
            got = step_positions(n, b, step, seed=5, stream=UNLABELED)
            assert got.dtype == np.int64 and np.array_equal(got, _reference(n, b, step, 5, UNLABELED))
    for step in range(12):  # the replayed stream: batch j mod (n // b) of the epoch's permutation
        e, j = divmod(step, 6)
        perm = pass_permutation(10, 2, 3, e)
        assert np.array_equal(replay_positions(10, 4, step, 6, seed=2), perm[(j % 2) * 4:(j % 2) * 4 + 4])


def test_permutation_cache_is_bounded_and_keeps_the_big_pass():
    from finessl_lab.data.sampling import PermutationCache
    cache = PermutationCache(max_entries=4, max_elements=1500)
    big = cache.get(1000, 0, UNLABELED, 0)
    assert not big.flags.writeable
    for p in range(50):  # a small labeled set starts a new pass almost every step
        cache.get(10, 0, LABELED, p)
        assert cache.get(1000, 0, UNLABELED, 0) is big  # touched every step: never recomputed
    assert len(cache._perms) <= 4 and cache._elements <= 1500
    assert [k[3] for k in cache._perms if k[2] == LABELED] == [48, 49]  # a stream keeps its last two passes
    cache.get(1000, 0, UNLABELED, 1)  # the next pass: over the element budget, the least recently used go
    assert cache._elements <= 1500 and (1000, 0, UNLABELED, 1) in cache._perms
