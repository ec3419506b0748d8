"""The ``llm-gateway`` command and composition root at process level: ``serve`` (launch configured
sim engines, build the gateway inside the event loop, run it under uvicorn; with ``--workers N``, N
supervised worker processes, see gateway/workers.py) and ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from backends.launchers.process import ProcessLauncher, _die_with_parent, free_port, sim_command
from gateway.app import create_app
from gateway.composition import build_gateway, build_policies
from gateway.settings import ConfigError, GatewaySettings, embedded_defaults, load_settings
from gateway.tenancy import keys_command
from gateway.workers import GatewayServer, WorkersFailed, check_workers, run_workers, server_config

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


async def serve(settings: GatewaySettings, host: str, port: int, workers: int = 1) -> None:
    urls, launchers = launch_sims(settings)
    try:
        await asyncio.gather(*(launcher.wait_healthy() for launcher in launchers))
        for launcher in launchers:
            log.info("started sim engine %s at %s (pid %s)", launcher.name, launcher.url,
                     launcher.process.pid if launcher.process else "?")
        if workers > 1:
            await run_workers(settings, urls, host, port, workers, preexec=_die_with_parent)
            return
        gateway = build_gateway(settings, urls)
        await GatewayServer(server_config(create_app(gateway), settings, host, port)).serve()
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
    serve_cmd.add_argument("--workers", type=int, help="worker processes (override server.workers, "
                           "default 1); more than one needs the Redis store when limits are set")
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
            check_workers(settings, settings.server.workers)
            print(f"ok: {len(settings.backends)} backends, models: {', '.join(settings.model_names)}")
            return 0
        settings = _settings(args.config)
        build_policies(settings)
        workers = args.workers if args.workers is not None else settings.server.workers
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {workers}")
        check_workers(settings, workers)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    try:
        import uvloop
        uvloop.run(serve(settings, host, port, workers))
    except KeyboardInterrupt:
        pass
    except WorkersFailed as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
