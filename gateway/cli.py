"""The ``llm-gateway`` command and composition root at process level: ``serve`` (launch configured
sim engines, build the gateway inside the event loop, run it under uvicorn) and ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from backends.launchers.process import ProcessLauncher, free_port, sim_command
from gateway.app import create_app
from gateway.composition import build_gateway, build_policies
from gateway.settings import ConfigError, GatewaySettings, embedded_defaults, load_settings
from gateway.tenancy import keys_command

log = logging.getLogger("gateway.cli")


def launch_sims(settings: GatewaySettings, log_dir: Path | None = None) -> tuple[dict[str, str],
                                                                                  list[ProcessLauncher]]:
    urls: dict[str, str] = {}
    launchers: list[ProcessLauncher] = []
    for backend in settings.backends:
        if backend.url is not None:
            urls[backend.name] = backend.url
            continue
        assert backend.sim is not None
        port = backend.sim.port or free_port()
        launcher = ProcessLauncher(
            backend.name,
            sim_command(backend.sim.dialect, backend.models[0], port, profile=backend.sim.profile,
                        extra_args=backend.sim.args),
            port,
            log_path=(log_dir / f"{backend.name}.log") if log_dir else None,
        )
        launcher.start()
        launchers.append(launcher)
        urls[backend.name] = launcher.url
    return urls, launchers


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT after shutdown, which would kill the process before
    the engines it launched are stopped; here a signal only asks the server to exit."""

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


async def serve(settings: GatewaySettings, host: str, port: int) -> None:
    urls, launchers = launch_sims(settings)
    try:
        await asyncio.gather(*(launcher.wait_healthy() for launcher in launchers))
        for launcher in launchers:
            log.info("started sim engine %s at %s (pid %s)", launcher.name, launcher.url,
                     launcher.process.pid if launcher.process else "?")
        gateway = build_gateway(settings, urls)
        app = create_app(gateway)
        config = uvicorn.Config(app, host=host, port=port, http="httptools", loop="none",
                                log_level=settings.server.log_level, access_log=False,
                                timeout_graceful_shutdown=10,
                                # Clients keep pooled connections open for a while (aiohttp 15 s,
                                # loadgen 60 s); uvicorn's 5 s default closed them under their feet.
                                timeout_keep_alive=75)
        await _Server(config).serve()
    finally:
        for launcher in launchers:
            launcher.stop()


def _settings(path: str | None) -> GatewaySettings:
    if path is None:
        log.warning("no --config given: running the embedded defaults (2 simulated engines, "
                    "limits in memory, AUTH DISABLED)")
        return embedded_defaults()
    return load_settings(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", help="YAML config file (default: embedded defaults)")
    serve_cmd.add_argument("--host", help="override server.host")
    serve_cmd.add_argument("--port", type=int, help="override server.port")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config")
    commands.add_parser("keys", help="API key helpers (llm-gateway keys --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_command(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "check-config":
            settings = load_settings(args.config)
            build_policies(settings)
            print(f"ok: {len(settings.backends)} backends, models: {', '.join(settings.model_names)}")
            return 0
        settings = _settings(args.config)
        build_policies(settings)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    try:
        import uvloop
        uvloop.run(serve(settings, host, port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
