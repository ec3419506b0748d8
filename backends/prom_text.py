"""Parse an engine's Prometheus text exposition into the few numbers an adapter asks for.

Engines expose hundreds of histogram lines per scrape; only lines of the wanted metric names are
handed to ``prometheus_client``'s parser, so a scrape costs little on the event loop. Names are the
caller's (each adapter knows its engine's metric names); this module knows none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

Labels = dict[str, str]


class MetricSamples:
    """The samples of the wanted metrics: name -> [(labels, value)]."""

    __slots__ = ("_samples",)

    def __init__(self, samples: dict[str, list[tuple[Labels, float]]]) -> None:
        self._samples = samples

    def sum(self, name: str) -> float | None:
        """Sum over every label set, or None when the metric is absent (NaN samples skipped)."""
        values = [v for _, v in self._samples.get(name, ()) if not math.isnan(v)]
        return math.fsum(values) if values else None

    def mean(self, name: str) -> float | None:
        """Mean over label sets (for ratios such as a cache usage fraction per engine)."""
        values = [v for _, v in self._samples.get(name, ()) if not math.isnan(v)]
        return math.fsum(values) / len(values) if values else None

    def label_sets(self, name: str) -> list[Labels]:
        return [labels for labels, _ in self._samples.get(name, ())]


def parse_metrics(text: str, wanted: Iterable[str]) -> MetricSamples:
    """Samples of the ``wanted`` metric names in ``text``; raises ValueError on a malformed line."""
    names = frozenset(wanted)
    kept = [line for line in text.splitlines() if _sample_name(line) in names]
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            if sample.name in names:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return MetricSamples(samples)


def _sample_name(line: str) -> str:
    if not line or line[0] == "#":
        return ""
    end = len(line)
    for sep in ("{", " ", "\t"):
        index = line.find(sep)
        if index != -1 and index < end:
            end = index
    return line[:end]
