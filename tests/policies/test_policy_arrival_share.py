"""policies/arrival_share.py: each backend's share of recent arrivals per prefix key, bounded in memory."""

from __future__ import annotations

import pytest

from policies.arrival_share import ArrivalShare


def test_share_counts_the_last_window_of_arrivals() -> None:
    arrivals = ArrivalShare(window=4, max_backends=8)
    assert arrivals.share("a", 1) == 0.0
    for key in (1, 1, 2):
        arrivals.add("a", key)
    assert arrivals.share("a", 1) == 0.5, "of a full window: 2 of 4"
    assert arrivals.share("a", 2) == 0.25 and arrivals.share("b", 1) == 0.0
    for key in (2, 2, 2):  # the two 1s slide out
        arrivals.add("a", key)
    assert arrivals.share("a", 1) == 0.0 and arrivals.share("a", 2) == 1.0
    assert arrivals.stored() == 4


def test_memory_is_bounded_by_window_and_backends() -> None:
    arrivals = ArrivalShare(window=8, max_backends=3)
    for i in range(10_000):
        arrivals.add(f"backend-{i % 5}", i % 97)
    assert arrivals.stored() <= 8 * 3
    arrivals.forget("backend-4")
    assert arrivals.share("backend-4", 4) == 0.0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        ArrivalShare(window=0, max_backends=1)
