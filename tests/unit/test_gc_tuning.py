"""The serving process's collector settings: startup objects frozen, a larger young generation."""

from __future__ import annotations

import gc

from gateway.gc_tuning import GEN0_THRESHOLD, OLDER_THRESHOLD, tune_for_serving


def test_tune_for_serving_freezes_startup_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_for_serving()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GEN0_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
        assert gc.isenabled()  # cycles are still collected, only less often
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
