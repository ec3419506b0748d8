"""The live set of backends: each one's adapter, in-flight count, health, circuit breaker and last
scraped load; and the candidates a request for a model may go to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.errors import NotFoundError
from gateway.settings import BackendConfig
from gateway.types import BackendLoad, EngineAdapter
from policies.base import Candidate


@dataclass(eq=False)
class Backend:
    config: BackendConfig
    adapter: EngineAdapter
    url: str
    failures_to_open: int = 3
    in_flight: int = 0
    consecutive_failures: int = 0
    breaker_open: bool = False
    draining: bool = False
    load: BackendLoad = field(default_factory=BackendLoad)
    scraped: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def available(self) -> bool:
        return not self.breaker_open and not self.draining

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.breaker_open = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failures_to_open:
            self.breaker_open = True

    def candidate(self) -> Candidate:
        return Candidate(
            name=self.config.name,
            weight=self.config.weight,
            in_flight=self.in_flight,
            queue_depth=self.load.waiting,
            cache_blocks=self.load.num_blocks or self.config.cache_blocks,
            block_size=self.load.block_size or self.config.block_size,
        )


class Registry:
    def __init__(self, backends: Iterable[Backend]) -> None:
        self._backends: dict[str, Backend] = {}
        self._by_model: dict[str, list[Backend]] = {}
        for backend in backends:
            self.add(backend)

    def add(self, backend: Backend) -> None:
        self._backends[backend.name] = backend
        for model in backend.config.models:
            self._by_model.setdefault(model, []).append(backend)

    def remove(self, name: str) -> Backend | None:
        backend = self._backends.pop(name, None)
        if backend is not None:
            for model in backend.config.models:
                remaining = [b for b in self._by_model.get(model, []) if b is not backend]
                if remaining:
                    self._by_model[model] = remaining
                else:
                    self._by_model.pop(model, None)
        return backend

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    @property
    def models(self) -> list[str]:
        return list(self._by_model)

    def serving(self, model: str) -> list[Backend]:
        backends = self._by_model.get(model)
        if not backends:
            raise NotFoundError(f"The model `{model}` does not exist.", param="model")
        return backends

    def candidates(self, model: str) -> list[Candidate]:
        """Available backends for ``model``; when none is, all of them (a stale view must not cause
        an outage: unreachable engines fail fast and the loop moves on)."""
        backends = self.serving(model)
        usable = [b for b in backends if b.available]
        return [b.candidate() for b in (usable or [b for b in backends if not b.draining] or backends)]

    def ready(self) -> dict[str, bool]:
        return {model: any(b.available for b in bs) for model, bs in self._by_model.items()}
