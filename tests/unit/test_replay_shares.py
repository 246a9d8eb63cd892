"""How replay shares the runs among its worker processes (consumers.replay.share_runs)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumers.replay import share_runs


@given(st.lists(st.integers(1, 10_000), max_size=40), st.integers(1, 4))
def test_every_run_goes_to_one_worker_and_no_worker_carries_much_more_than_its_part(sizes, workers):
    runs = sorted(((f"e/p/r{i}", size) for i, size in enumerate(sizes)), key=lambda r: -r[1])
    shares = share_runs(runs, workers)
    assert sorted(run for run, _ in shares) == sorted(run for run, _ in runs)
    load = [0] * workers
    for (_, size), (_, worker) in zip(runs, shares, strict=True):
        assert 0 <= worker < workers
        load[worker] += size
    # greedy bound: the last run added to the fullest worker found it at most at the average
    assert max(load) <= sum(sizes) / workers + max(sizes, default=0)


def test_one_big_run_and_many_small_ones_are_split_evenly():
    runs = [("big", 100)] + [(f"s{i}", 10) for i in range(10)]
    load = [0, 0]
    for (_, size), (_, worker) in zip(runs, share_runs(runs, 2), strict=True):
        load[worker] += size
    assert load == [100, 100]
