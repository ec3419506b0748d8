"""Start and stop a real vLLM CPU server (the tiny local model) for tests, benchmarks and recordings.

The install and the model come from ``scripts/setup_vllm.sh`` (see shared/reference/vllm.md for why
only that combination works). ``VllmServer`` is a context manager: it launches
``python -m vllm.entrypoints.openai.api_server`` from the vLLM venv as a subprocess in its own session,
sends its output to a log file, waits for ``GET /health`` to answer 200 (failing fast, with the log's
tail, if the process dies), and stops it with SIGTERM to its PID (SIGKILL to its process group if it
has not exited after a grace period). Stdlib only, so any venv can import it.

Run one by hand: ``.venv/bin/python -m tests.support.vllm_server --port 8300`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".cache" / "vllm-venv"
DEFAULT_MODEL = REPO_ROOT / ".cache" / "tiny-llama"
SERVED_MODEL_NAME = "tiny-llama"
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


@dataclass(frozen=True)
class VllmInstall:
    """Where the vLLM venv's python and the tiny model are (``VLLM_VENV`` / ``VLLM_MODEL_DIR`` override)."""

    venv: Path = field(default_factory=lambda: Path(os.environ.get("VLLM_VENV", DEFAULT_VENV)))
    model_dir: Path = field(default_factory=lambda: Path(os.environ.get("VLLM_MODEL_DIR", DEFAULT_MODEL)))

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def missing(self) -> str | None:
        """Why a server cannot be started here, or None when everything is in place."""
        if not (self.venv / ".installed").is_file() or not self.python.exists():
            return f"vLLM venv missing at {self.venv}: run scripts/setup_vllm.sh"
        if not (self.model_dir / "config.json").is_file():
            return f"tiny model missing at {self.model_dir}: run scripts/setup_vllm.sh"
        return None


@dataclass(frozen=True)
class VllmServerConfig:
    """The server's flags; the defaults are the test fleet's (256 blocks of 128 tokens, 8 sequences)."""

    served_model_name: str = SERVED_MODEL_NAME
    max_model_len: int = 2048
    num_gpu_blocks: int = 256
    max_num_seqs: int = 8
    extra_args: tuple[str, ...] = ()
    # The CPUs every process of the server runs on (its compute threads bound there too); () for all.
    cpus: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        if not self.cpus:
            return dict(SERVER_ENV)
        return {**SERVER_ENV, "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, self.cpus))}

    def args(self, model_dir: Path, port: int) -> list[str]:
        return [
            "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            "--enable-prefix-caching",
            "--enforce-eager",
            "--num-gpu-blocks-override", str(self.num_gpu_blocks),
            "--max-num-seqs", str(self.max_num_seqs),
            "--enable-prompt-tokens-details",
            "--disable-uvicorn-access-log",
            *self.extra_args,
        ]


class VllmServerError(RuntimeError):
    """The server died or did not become healthy in time; the message carries its log's tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VllmServer:
    """One vLLM server subprocess on 127.0.0.1."""

    def __init__(
        self,
        log_path: Path,
        *,
        config: VllmServerConfig | None = None,
        install: VllmInstall | None = None,
        port: int | None = None,
        ready_timeout_s: float = 300.0,
        stop_grace_s: float = 15.0,
    ) -> None:
        self.config = config or VllmServerConfig()
        self.install = install or VllmInstall()
        self.port = port or free_port()
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model(self) -> str:
        return self.config.served_model_name

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        missing = self.install.missing()
        if missing:
            raise VllmServerError(missing)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.config.env()}
        cpus = self.config.cpus
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            # A session of its own: a last-resort SIGKILL can reach the engine-core child too.
            self._process = subprocess.Popen(
                [str(self.install.python), *self.config.args(self.install.model_dir, self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=REPO_ROOT, start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_healthy(self, started: float) -> None:
        assert self._process is not None
        while time.monotonic() - started < self.ready_timeout_s:
            code = self._process.poll()
            if code is not None:
                raise VllmServerError(f"vLLM exited with {code} before it was healthy:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise VllmServerError(f"vLLM not healthy after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the tiny-model vLLM CPU server until Ctrl-C.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--log", type=Path, default=REPO_ROOT / ".cache" / "logs" / "vllm-server.log")
    parser.add_argument("--num-gpu-blocks", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    options = parser.parse_args()
    config = VllmServerConfig(num_gpu_blocks=options.num_gpu_blocks, max_num_seqs=options.max_num_seqs)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # so SIGTERM also stops the server
    with VllmServer(options.log, config=config, port=options.port) as server:
        print(f"vLLM ready at {server.base_url} (model {server.model}, pid {server.pid}, "
              f"{server.startup_seconds:.0f} s), log {options.log}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
