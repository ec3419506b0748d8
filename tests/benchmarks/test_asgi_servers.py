"""benchmarks/asgi_servers.py: each server variant serves the hello answer (the client checks every status
and body) and its CPU per request is read from /proc; granian's variants need the ``bench`` extra."""

from __future__ import annotations

import pytest

from benchmarks.asgi_servers import granian_path, measure, server_command

pytestmark = pytest.mark.slow


def test_rsgi_runs_the_rsgi_app_and_asgi_the_asgi_one() -> None:
    rsgi, asgi = server_command("granian-rsgi", 1), server_command("granian", 1)
    assert rsgi[rsgi.index("--interface") + 1] == "rsgi" and rsgi[-1] == "benchmarks.asgi_hello:rsgi_app"
    assert asgi[asgi.index("--interface") + 1] == "asgi" and asgi[-1] == "benchmarks.asgi_hello:app"


@pytest.mark.parametrize("server", ["uvicorn", "granian-rsgi"])
def test_a_server_answers_and_is_measured(server: str) -> None:
    if server.startswith("granian") and granian_path() is None:
        pytest.skip("granian is in the bench extra (pip install -e '.[bench]')")
    # /proc counts CPU in 10 ms ticks: enough requests (~0.02 ms each) to span several.
    (row,) = measure(server, 4000, (16,))
    assert row["server"] == server and row["requests"] == 4000
    assert row["cpu_ms_per_request"] > 0 and row["requests_per_s"] > 0
