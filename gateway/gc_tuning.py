"""The garbage collector's settings for a serving process, applied once the server has started.

Why: every request allocates a few hundred short-lived objects, so CPython's default generation-0
threshold (700 allocations) runs a collection every few requests, and objects of requests still in
flight get promoted and traversed again in the older generations, together with the hundreds of
thousands of objects the app built at startup (litestar, pydantic models, prometheus, config).
``gc.freeze()`` moves those startup objects out of the collector's sight for good, and a generation-0
threshold of 10,000 lets most request objects die before a collection sees them. Measured with the full
pipeline at 16 concurrent non-stream requests, 6 alternations of 3,000 requests in one run: 0.337 ms of
gateway CPU per request by default, 0.300 with this, the same as with the collector disabled (0.300);
freezing alone or the threshold alone bought about a third of it each. Reference cycles are still
collected, only less often.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
OLDER_THRESHOLD = 20


def tune_for_serving() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
