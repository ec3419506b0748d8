"""Labelled Prometheus metrics whose children, once made, are found again by a dict lookup.

Why: prometheus_client's ``labels()`` checks, stringifies and takes a lock on every call (about 1 us
here), and a request makes about a dozen such calls (its counters and histograms in the pipeline,
routing and limits): the children are the same every time for the same label values, so the first
lookup for a combination keeps it. The combinations are bounded as the labels are (model, backend,
dialect, outcome, tenant...: all from config or validated against it). Keyword lookups and removals go
to prometheus_client as before (a removal forgets the cached children).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram


class _CachedLabels:
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        cache: dict[tuple[Any, ...], Any] | None = self.__dict__.get("_children_by_values")
        if cache is None:
            cache = self.__dict__["_children_by_values"] = {}
        child = cache.get(labelvalues)
        if child is None:
            child = cache[labelvalues] = super().labels(*labelvalues)  # type: ignore[misc]
        return child

    def remove(self, *labelvalues: Any) -> None:
        self.__dict__.pop("_children_by_values", None)
        super().remove(*labelvalues)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_children_by_values", None)
        super().clear()  # type: ignore[misc]


class CachedCounter(_CachedLabels, Counter):
    pass


class CachedHistogram(_CachedLabels, Histogram):
    pass
