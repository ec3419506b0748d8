"""Which prefixes dominate each backend's recent arrivals: the last ``window`` prefix keys routed to it.

``prefix_affinity`` uses it to shed a hot prefix first: when a backend is busier than the fleet's mean and
one prefix brought at least ``share`` of its recent arrivals, that prefix goes to its next best backend,
so the backend's other, smaller tenants keep their place (and their cache) instead of spilling whenever
the hot one pushes the backend over the load bound. A hot prefix is the cheapest to move: it is already
cached on several backends, or soon will be, and one prefill is small against its traffic.

Memory is bounded: ``window`` keys per backend, at most ``max_backends`` backends (least recently routed
to dropped first).
"""

from __future__ import annotations

from collections import OrderedDict, deque


class _Arrivals:
    __slots__ = ("counts", "keys")

    def __init__(self, window: int) -> None:
        self.keys: deque[int] = deque(maxlen=window)
        self.counts: dict[int, int] = {}


class ArrivalShare:
    """Per backend, how many of its last ``window`` routed requests carried each prefix key."""

    __slots__ = ("_backends", "_max_backends", "_window")

    def __init__(self, window: int, max_backends: int) -> None:
        if window < 1 or max_backends < 1:
            raise ValueError("window and max_backends must be >= 1")
        self._window = window
        self._max_backends = max_backends
        self._backends: OrderedDict[str, _Arrivals] = OrderedDict()

    def add(self, backend: str, key: int) -> None:
        """A request with prefix ``key`` was routed to ``backend``."""
        entry = self._backends.get(backend)
        if entry is None:
            entry = self._backends[backend] = _Arrivals(self._window)
            while len(self._backends) > self._max_backends:
                self._backends.popitem(last=False)
        else:
            self._backends.move_to_end(backend)
        keys, counts = entry.keys, entry.counts
        if len(keys) == self._window:
            dropped = keys[0]
            left = counts[dropped] - 1
            if left:
                counts[dropped] = left
            else:
                del counts[dropped]
        keys.append(key)
        counts[key] = counts.get(key, 0) + 1

    def share(self, backend: str, key: int) -> float:
        """The fraction of ``backend``'s last ``window`` arrivals that carried ``key`` (of a full window:
        a backend that has seen few requests reports a small share)."""
        entry = self._backends.get(backend)
        return 0.0 if entry is None else entry.counts.get(key, 0) / self._window

    def forget(self, backend: str) -> None:
        self._backends.pop(backend, None)

    def stored(self) -> int:
        return sum(len(entry.keys) for entry in self._backends.values())
