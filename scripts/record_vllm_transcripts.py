"""Record real vLLM SSE transcripts into tests/data/vllm (NAME.sse raw bytes + NAME.json facts).

Against a running server:   .venv/bin/python scripts/record_vllm_transcripts.py --base-url URL
Starting its own server:    .venv/bin/python scripts/record_vllm_transcripts.py
The server must serve the tiny model as "tiny-llama" (tests/support/vllm_server.py starts one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a file, the script's own folder is on sys.path, not the repository root.
sys.path.insert(0, str(REPO_ROOT))

from tests.support.vllm_server import VllmServer  # noqa: E402
from tests.support.vllm_transcripts import SPECS, record, save  # noqa: E402


def record_all(base_url: str, out_dir: Path) -> None:
    for spec in SPECS:
        recorded = save(record(base_url, spec), out_dir)
        print(f"{spec.name}: status {recorded['status']}, {recorded['data_events']} data events, "
              f"usage chunk {recorded.get('usage_chunk')}, finish {recorded.get('finish_reason')!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base-url", help="a running vLLM server; omitted: start one")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "data" / "vllm")
    options = parser.parse_args()
    if options.base_url:
        record_all(options.base_url, options.out)
        return 0
    with VllmServer(REPO_ROOT / ".cache" / "logs" / "vllm-record.log") as server:
        record_all(server.base_url, options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
