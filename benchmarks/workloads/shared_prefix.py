"""Shared-prefix multi-tenant workload: the cache-affinity benchmark's traffic.

``tenants`` tenants with Zipf(``zipf_s``) popularity (tenant ``k``, 0-based, has weight
``1 / (k + 1) ** s``). Every tenant has a fixed prefix of ``prefix_words`` words (its system prompt,
derived from ``prefix_seed`` and the tenant alone, so it is the same in every run and every rate of
a sweep). Each request adds a unique user message of ``suffix_words`` words and asks for
``output_tokens`` tokens.

About ``session_fraction`` of the requests belong to multi-turn sessions: a session has a tenant and
``min_turns..max_turns`` turns; each turn resends the whole history (system prefix, earlier user
messages and assistant replies) plus a new user message. Sessions interleave with other traffic: a
session request starts a new session with probability ``1 / mean turns`` (always when none is open,
never when ``max_open_sessions`` are open) and otherwise continues a random open one. The assistant
replies in the specs are synthetic (``output_tokens`` words); the load generator replaces them with
the text the engine actually generated (``run_load(session_history="actual")``), as a real chat
client would.

All randomness comes from ``random.Random`` seeded with strings (stable across Python versions).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from benchmarks.workloads.spec import Message, RequestSpec
from benchmarks.workloads.words import random_words


@dataclass
class _Session:
    name: str
    tenant: int
    turns: int
    history: list[Message] = field(default_factory=list)
    turn: int = 0
    words: int = 0


@dataclass(frozen=True)
class SharedPrefixWorkload:
    tenants: int = 64
    zipf_s: float = 1.1
    prefix_words: int = 2048
    suffix_words: int = 128
    output_tokens: int = 128
    session_fraction: float = 0.5
    min_turns: int = 2
    max_turns: int = 4
    max_open_sessions: int = 16
    prefix_seed: int = 0
    name: str = "shared-prefix"

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.prefix_words < 0 or self.suffix_words < 1 or self.output_tokens < 1:
            raise ValueError("tenants, suffix_words and output_tokens must be positive")
        if not 0.0 <= self.session_fraction <= 1.0:
            raise ValueError("session_fraction must be in [0, 1]")
        if not 1 <= self.min_turns <= self.max_turns or self.max_open_sessions < 1:
            raise ValueError("need 1 <= min_turns <= max_turns and max_open_sessions >= 1")

    def settings(self) -> dict[str, object]:
        return {"name": self.name, "tenants": self.tenants, "zipf_s": self.zipf_s,
                "prefix_words": self.prefix_words, "suffix_words": self.suffix_words,
                "output_tokens": self.output_tokens, "session_fraction": self.session_fraction,
                "min_turns": self.min_turns, "max_turns": self.max_turns,
                "max_open_sessions": self.max_open_sessions, "prefix_seed": self.prefix_seed}

    def tenant_name(self, tenant: int) -> str:
        return f"tenant-{tenant:03d}"

    def tenant_prefix(self, tenant: int) -> str:
        return random_words(random.Random(f"prefix:{self.prefix_seed}:{tenant}"), self.prefix_words)

    def tenant_weights(self) -> list[float]:
        return [1.0 / (k + 1) ** self.zipf_s for k in range(self.tenants)]

    def generate(self, num_requests: int, seed: int) -> Iterator[RequestSpec]:
        rng = random.Random(f"shared-prefix:{seed}")
        cum_weights = list(itertools.accumulate(self.tenant_weights()))
        prefixes: dict[int, str] = {}
        open_sessions: list[_Session] = []
        session_ids = itertools.count()
        start_probability = 2.0 / (self.min_turns + self.max_turns)

        def draw_tenant() -> int:
            return rng.choices(range(self.tenants), cum_weights=cum_weights)[0]

        def system(tenant: int) -> Message:
            if tenant not in prefixes:
                prefixes[tenant] = self.tenant_prefix(tenant)
            return Message("system", prefixes[tenant])

        for index in range(num_requests):
            user = random_words(rng, self.suffix_words)
            if rng.random() >= self.session_fraction:
                tenant = draw_tenant()
                yield RequestSpec(index=index, max_tokens=self.output_tokens,
                                  messages=(system(tenant), Message("user", user)),
                                  tenant=self.tenant_name(tenant),
                                  prompt_words=self.prefix_words + self.suffix_words)
                continue
            full = len(open_sessions) >= self.max_open_sessions
            if open_sessions and (full or rng.random() >= start_probability):
                session = rng.choice(open_sessions)
            else:
                tenant = draw_tenant()
                session = _Session(f"session-{next(session_ids)}", tenant,
                                   rng.randint(self.min_turns, self.max_turns),
                                   [system(tenant)], words=self.prefix_words)
                open_sessions.append(session)
            session.history.append(Message("user", user))
            session.words += self.suffix_words
            yield RequestSpec(index=index, max_tokens=self.output_tokens, messages=tuple(session.history),
                              tenant=self.tenant_name(session.tenant), session=session.name,
                              turn=session.turn, prompt_words=session.words)
            session.turn += 1
            if session.turn >= session.turns:
                open_sessions.remove(session)
            else:
                session.history.append(Message("assistant", " " + random_words(rng, self.output_tokens)))
                session.words += self.output_tokens
