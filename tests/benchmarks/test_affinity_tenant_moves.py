"""benchmarks/affinity/analysis.tenant_moves: which tenants changed engine across a kill, and the share of the
survivors' tenants' later requests kept where they were (with and without the killed engine's part)."""

from __future__ import annotations

import pytest

from benchmarks.affinity.analysis import tenant_moves
from benchmarks.loadgen import RequestRecord

HEADER = "x-llm-gateway-backend"


def served(placements: list[tuple[float, str, str]]) -> list[RequestRecord]:
    return [RequestRecord(index=i, arrival=start, start=start, max_tokens=1, success=True, tenant=tenant,
                          headers={HEADER: engine})
            for i, (start, tenant, engine) in enumerate(placements)]


def test_a_tenant_split_with_the_killed_engine_may_move_that_part() -> None:
    # Before the kill at t=10: "split" 4 on e0 and 2 on e1 (killed: a third); "home" all 8 on e2.
    before = [(1.0 + i, "split", "e1" if i in (0, 3) else "e0") for i in range(6)]
    before += [(1.5 + i, "home", "e2") for i in range(8)]
    # After: "split" sends 4 to e0 (kept) and 2 to e3 (new: its killed third, allowed);
    # "home" sends 6 to e2 and 2 to e3 (new, with nothing on the killed engine: moved beyond its share).
    after = [(13.0 + i, "split", "e3" if i in (1, 4) else "e0") for i in range(6)]
    after += [(13.5 + i, "home", "e2" if i < 6 else "e3") for i in range(8)]
    moves = tenant_moves(served(before + after), HEADER, 10.0, "e1", settle_s=2.0)
    assert moves["tenants_on_survivors"] == 2 and moves["tenants_on_survivors_moved"] == 0
    assert moves["survivor_tenant_requests_on_a_previous_engine"] == pytest.approx((4 + 6) / 14)
    assert moves["survivor_tenant_requests_kept_beyond_killed_share"] == pytest.approx(1 - 2 / 14)


def test_without_a_kill_both_shares_agree() -> None:
    placements = [(1.0 + i, "t", "e0") for i in range(6)] + [(11.0 + i, "t", "e0" if i < 4 else "e1")
                                                            for i in range(6)]
    moves = tenant_moves(served(placements), HEADER, 10.0, None, settle_s=0.0)
    assert moves["survivor_tenant_requests_on_a_previous_engine"] == pytest.approx(4 / 6)
    assert moves["survivor_tenant_requests_kept_beyond_killed_share"] == pytest.approx(4 / 6)
