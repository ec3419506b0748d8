"""A stand-in engine for measuring the gateway alone: nginx answering as a vLLM server with fixed
bodies (``/health``, ``/metrics`` with the cache geometry the gateway reads, and one fixed non-stream
answer for ``/v1/completions`` and ``/v1/chat/completions`` whatever the prompt).

Why: a sim engine is Python and costs more CPU per request than the gateway itself (0.32 ms against
0.18 in ``results/workers.json``), so on this 2-core machine it hides how the gateway scales. nginx
answers a fixed body for ~0.03 ms of CPU here, a tenth of the sim. It is a stand-in, not an engine:
no streaming, no tokens, no cache; only what the gateway's CPU cost and its workers' scaling need.
The bodies are copied from the sim's vLLM 0.32 answers (which the contract suite checks against real
vLLM).
Needs ``nginx`` on PATH (Debian: ``apt-get install nginx-light``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

COMPLETION_TOKENS = 16
PROMPT_TOKENS = 86
STAND_IN_TEXT = " dazo vuko bizu pego luva meso feri ziva nanu noti pipo nato siza kade zolo fotu"
_USAGE = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
          "completion_tokens": COMPLETION_TOKENS,
          "prompt_tokens_details": {"cached_tokens": 0, "created_cache_tokens": None,
                                    "multimodal_tokens": None},
          "completion_tokens_details": None}


def completion_body(model: str) -> str:
    return json.dumps({
        "id": "cmpl-nginx", "object": "text_completion", "created": 1796399826, "model": model,
        "choices": [{"index": 0, "text": STAND_IN_TEXT, "logprobs": None, "finish_reason": "length",
                     "stop_reason": None}],
        "system_fingerprint": "nginx-stand-in", "usage": _USAGE}, separators=(",", ":"))


def chat_body(model: str) -> str:
    return json.dumps({
        "id": "chatcmpl-nginx", "object": "chat.completion", "created": 1796399826, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": STAND_IN_TEXT}, "logprobs": None,
                     "finish_reason": "length", "stop_reason": None}],
        "system_fingerprint": "nginx-stand-in", "usage": _USAGE}, separators=(",", ":"))


def metrics_text(model: str, num_blocks: int = 4096, block_size: int = 16) -> str:
    labels = f'engine="0",model_name="{model}"'
    return "\n".join([
        f"vllm:num_requests_running{{{labels}}} 0.0",
        f"vllm:num_requests_waiting{{{labels}}} 0.0",
        f"vllm:kv_cache_usage_perc{{{labels}}} 0.0",
        f'vllm:cache_config_info{{block_size="{block_size}",engine="0",enable_prefix_caching="True",'
        f'num_gpu_blocks="{num_blocks}"}} 1.0',
        ""])


def nginx_quoted(text: str) -> str:
    """An nginx single-quoted string: nginx reads ``\\n`` and ``\\'`` escapes and expands ``$name``."""
    if "$" in text:
        raise ValueError("nginx would expand '$' in a returned body")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_config(port: int, model: str, work_dir: Path) -> str:
    """One worker process (so its CPU is one process's), no access log, keep-alive connections that
    never close on their own (nginx closes after 1,000 requests by default: the gateway would
    reconnect mid-run)."""
    temp = "\n".join(f"    {name}_temp_path {work_dir / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
daemon off;
pid {work_dir / 'nginx.pid'};
error_log {work_dir / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 8m;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /health {{ return 200 ''; }}
        location = /metrics {{ default_type text/plain; return 200 {nginx_quoted(metrics_text(model))}; }}
        location = /v1/completions {{ return 200 {nginx_quoted(completion_body(model))}; }}
        location = /v1/chat/completions {{ return 200 {nginx_quoted(chat_body(model))}; }}
        location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
    }}
}}
"""


def nginx_command(port: int, model: str, work_dir: Path) -> list[str]:
    """The command that serves the stand-in on ``port`` in the foreground (its config goes to
    ``work_dir``)."""
    nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "nginx.conf"
    config.write_text(nginx_config(port, model, work_dir))
    return [nginx, "-p", str(work_dir), "-e", str(work_dir / "error.log"), "-c", str(config)]
