"""Running the gateway's HTTP server: the uvicorn server both modes share, and ``serve --workers N``,
N worker processes behind one listening socket supervised by the parent. (About 350 lines because
the supervisor and the worker's bootstrap are two ends of one protocol: argv, spec file, readiness
pipe, metrics directory.)

Parent (``run_workers``, called by the CLI once it has launched the sim engines): binds the socket,
makes a private directory for the worker spec and prometheus_client's multiprocess files, starts each
worker as ``python -m gateway.workers`` with the socket's fd and a readiness pipe, waits until every
worker serves, then replaces any worker that dies (logged, with backoff) until SIGTERM or SIGINT,
when it stops the workers (SIGTERM, SIGKILL after the grace period) and removes the directory; the
CLI then stops the engines. A worker gets SIGTERM when the parent dies, however it dies (the CLI
passes the process launcher's PR_SET_PDEATHSIG hook); only then is the directory left behind.
Workers run in their own session, so a terminal's Ctrl-C reaches the parent alone, which stops them
in order.

Worker (``worker_main``): builds its own gateway from the same settings (no shared state: the same
config gives the same routing policies, and prefix_affinity's cold path is a consistent hash, so the
workers route a new prefix alike), serves it under uvloop + uvicorn/httptools on the inherited socket,
adds ``x-llm-gateway-worker: INDEX`` to each response, and serves every worker's metrics merged on
``/metrics`` (gateway/metrics.py says which are totals and which are per worker). ``/stats`` and the
routing indexes are the answering worker's own.

Limits and admin-created keys are shared by workers only through Redis: with the in-memory store each
worker would enforce its own copy of every limit, so ``check_workers`` refuses that configuration.
(With ``on_store_failure: fail_open``, a Redis outage makes each worker fall back to its own
in-memory limiter, as each replica does.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.composition import build_gateway
from gateway.dataplane import ASGIApp, Receive, Scope, Send
from gateway.gc_tuning import tune_for_serving
from gateway.http_protocol import GatewayHttpProtocol
from gateway.metrics import BackendCollector, BackendGaugePublisher, WorkersCollector, use_worker_files
from gateway.settings import ConfigError, GatewaySettings, parse_settings

log = logging.getLogger("gateway.workers")

WORKER_HEADER = b"x-llm-gateway-worker"
GRACE_S = 15.0  # uvicorn's graceful shutdown (10 s, below) and the gateway's own closing
STARTUP_TIMEOUT_S = 120.0
PUBLISH_EVERY_S = 1.0
QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after its start is restarted with backoff
MAX_BACKOFF_S = 30.0


def server_config(app: Any, settings: GatewaySettings, host: str, port: int) -> uvicorn.Config:
    # uvicorn's httptools protocol, sending each response's head with its body (http_protocol.py).
    return uvicorn.Config(app, host=host, port=port, http=GatewayHttpProtocol, loop="none",
                          log_level=settings.server.log_level, access_log=False,
                          timeout_graceful_shutdown=10,
                          # Clients keep pooled connections open for a while (aiohttp 15 s, loadgen
                          # 60 s); uvicorn's 5 s default closed them under their feet.
                          timeout_keep_alive=75,
                          # Nothing reads the client's address, so no X-Forwarded-* rewriting layer
                          # in front of every request.
                          proxy_headers=False)


class GatewayServer(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT after shutdown, which would kill the process before
    the engines it launched are stopped; here a signal only asks the server to exit. Once the server
    listens, the garbage collector is set for serving (``gc_tuning.py``) and ``on_started`` runs."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            tune_for_serving()
            if self._on_started is not None:
                self._on_started()


def check_workers(settings: GatewaySettings, workers: int) -> None:
    """Refuse N > 1 workers where they would not share state: limits or the admin API (keys it
    creates) with the in-memory store would exist once per worker."""
    tenancy = settings.tenancy
    if workers == 1 or tenancy.store == "redis":
        return
    scopes = ["tenancy.global_limits"] if not tenancy.global_limits.empty else []
    for i, tenant in enumerate(tenancy.tenants):
        if not tenant.limits.empty:
            scopes.append(f"tenancy.tenants[{i}].limits")
        scopes += [f"tenancy.tenants[{i}].model_limits.{m}" for m, lim in tenant.model_limits.items()
                   if not lim.empty]
    scopes += [f"tenancy.keys[{i}].limits" for i, key in enumerate(tenancy.keys)
               if key.limits is not None and not key.limits.empty]
    if tenancy.admin_key_hashes:
        scopes.append("tenancy.admin_key_hashes (keys created through the admin API)")
    if scopes:
        raise ConfigError(
            f"{workers} workers need tenancy.store: redis: with the in-memory store each worker would "
            "keep its own copy of " + ", ".join(scopes) + ", so limits would be N times too loose. "
            "Use the Redis store, or one worker.")


class WorkerHeader:
    """Adds ``x-llm-gateway-worker: INDEX`` to every HTTP response."""

    def __init__(self, app: ASGIApp, index: int) -> None:
        self._app = app
        self._header = (WORKER_HEADER, str(index).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        header = self._header

        async def send_with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self._app(scope, receive, send_with_header)


class WorkerSpec(msgspec.Struct, frozen=True):
    """What every worker gets from the parent, in a file in the parent's private directory."""

    settings: dict[str, Any]
    urls: dict[str, str]
    host: str
    port: int
    metrics_dir: str


class WorkersFailed(Exception):
    """The workers could not be started (socket, or a worker that exited before serving)."""


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    quick_deaths: int = 0
    ready: bool = False


class Supervisor:
    """Starts, watches and stops the worker processes of one listening socket."""

    def __init__(self, sock: socket.socket, spec_path: Path, metrics_dir: Path, workers: int,
                 preexec: Callable[[], None] | None) -> None:
        self._sock = sock
        self._preexec = preexec
        self._spec_path = spec_path
        self._metrics_dir = metrics_dir
        self._workers = [_Worker(i) for i in range(workers)]

    def start_all(self) -> None:
        for worker in self._workers:
            self._start(worker)

    def _start(self, worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", "gateway.workers", "--index", str(worker.index),
                   "--spec", str(self._spec_path), "--listen-fd", str(self._sock.fileno()),
                   "--ready-fd", str(write_fd), "--parent-pid", str(os.getpid())]
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        try:
            worker.process = subprocess.Popen(command, env=env, pass_fds=(self._sock.fileno(), write_fd),
                                              start_new_session=True, preexec_fn=self._preexec)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker.ready_fd, worker.ready, worker.started_at = read_fd, False, time.monotonic()

    def _poll(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            with contextlib.suppress(BlockingIOError):
                worker.ready = os.read(worker.ready_fd, 1) == b"1"
                os.close(worker.ready_fd)
                worker.ready_fd = None
                if worker.ready and worker.process is not None:
                    log.info("worker %d (pid %d) serving", worker.index, worker.process.pid)
        if worker.process is None or (code := worker.process.poll()) is None:
            return
        now = time.monotonic()
        worker.quick_deaths = worker.quick_deaths + 1 if now - worker.started_at < QUICK_DEATH_S else 0
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(worker.quick_deaths, 8))
        worker.next_start = now + delay
        log.error("worker %d (pid %d) exited with code %s; a replacement starts in %.1f s",
                  worker.index, worker.process.pid, code, delay)
        self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        """The worker is gone: its gauges (in flight, leases, breakers) must not outlive it, while its
        counters stay so that totals never go back."""
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
        worker.process, worker.ready_fd, worker.ready = None, None, False
        for path in self._metrics_dir.glob(f"gauge_*_{worker.index}.db"):
            path.unlink(missing_ok=True)

    async def wait_ready(self, stop: asyncio.Event) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not stop.is_set() and not all(w.ready for w in self._workers):
            for worker in self._workers:
                self._poll(worker)
                if worker.process is None:
                    raise WorkersFailed(f"worker {worker.index} exited before serving (see its log above)")
            if time.monotonic() > deadline:
                raise WorkersFailed(f"workers not serving after {STARTUP_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)

    async def supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for worker in self._workers:
                self._poll(worker)
                if worker.process is None and time.monotonic() >= worker.next_start:
                    self._start(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def stop(self) -> None:
        running = [w.process for w in self._workers if w.process is not None and w.process.poll() is None]
        log.info("stopping %d workers", len(running))
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for _ in range(round(GRACE_S / 0.05)):
            if all(p.poll() is not None for p in running):
                break
            await asyncio.sleep(0.05)
        for process in running:
            if process.poll() is None:
                log.warning("worker pid %d did not stop in %.0f s: killing it", process.pid, GRACE_S)
                process.kill()
                process.wait(timeout=5)
        for worker in self._workers:
            self._forget(worker)


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


async def run_workers(settings: GatewaySettings, urls: dict[str, str], host: str, port: int,
                      workers: int, preexec: Callable[[], None] | None = None) -> None:
    """Serve with ``workers`` processes until SIGTERM or SIGINT; raises ``WorkersFailed``. ``preexec``
    runs in each worker before exec: the CLI passes the launcher's die-with-parent hook."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-"))
    try:
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        spec = WorkerSpec(settings.model_dump(mode="json"), urls, host, port, str(metrics_dir))
        spec_path = workdir / "worker.json"
        spec_path.write_bytes(msgspec.json.encode(spec))
        try:
            sock = listen_socket(host, port)
        except OSError as exc:
            raise WorkersFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        with sock:
            supervisor = Supervisor(sock, spec_path, metrics_dir, workers, preexec)
            try:
                supervisor.start_all()
                await supervisor.wait_ready(stop)
                if not stop.is_set():
                    log.info("llm-gateway serving on http://%s:%d with %d workers", host,
                             sock.getsockname()[1], workers)
                await supervisor.supervise(stop)
            finally:
                await supervisor.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _publish(publish: Callable[[], None]) -> None:
    while True:
        publish()
        await asyncio.sleep(PUBLISH_EVERY_S)


async def _serve_worker(index: int, spec: WorkerSpec, sock: socket.socket, ready_fd: int) -> None:
    settings = parse_settings(spec.settings)
    gateway = build_gateway(settings, spec.urls)
    publisher = BackendGaugePublisher(BackendCollector(gateway.registry))
    exposition = CollectorRegistry()
    exposition.register(WorkersCollector(spec.metrics_dir, publisher))
    app = WorkerHeader(create_app(gateway, exposition), index)

    def notify_ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    publishing = asyncio.create_task(_publish(publisher.publish))
    try:
        await GatewayServer(server_config(app, settings, spec.host, spec.port), notify_ready).serve(
            sockets=[sock])
    finally:
        publishing.cancel()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.workers",
                                     description="one worker of llm-gateway serve --workers N")
    for name in ("--index", "--listen-fd", "--ready-fd", "--parent-pid"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    if os.getppid() != args.parent_pid:
        return 1  # the parent died before this worker could ask to follow it
    use_worker_files(args.index)  # before any module creates a metric
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{args.index} %(name)s: %(message)s")
    spec = msgspec.json.decode(Path(args.spec).read_bytes(), type=WorkerSpec)
    sock = socket.socket(fileno=args.listen_fd)
    uvloop.run(_serve_worker(args.index, spec, sock, args.ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
