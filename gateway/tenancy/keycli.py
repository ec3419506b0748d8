"""``llm-gateway keys ...``: the command-line side of API keys, for keys declared in config.

- ``keys hash [KEY]``: print the hash to put in config (reads the key from stdin when not given, so
  it stays out of shell history); for gateway keys also the public id.
- ``keys new --tenant T [--name N]``: generate a key, print it once and its config entry.

The composition root's CLI passes the arguments after ``keys`` to ``keys_command``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from gateway.tenancy.keys import generate_key, hash_key, key_id_of


def keys_command(argv: Sequence[str], *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="llm-gateway keys", description="API key helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser("hash", help="print the hash of a key (API key or admin key)")
    hashing.add_argument("key", nargs="?", help="the key; read from stdin when omitted")
    new = commands.add_parser("new", help="generate an API key for a tenant declared in config")
    new.add_argument("--tenant", required=True)
    new.add_argument("--name", default="")
    args = parser.parse_args(list(argv))
    if args.command == "hash":
        key = (args.key or stdin.readline()).strip()
        if not key:
            print("no key given", file=sys.stderr)
            return 2
        key_id = key_id_of(key)
        if key_id is None:
            print(hash_key(key), file=stdout)
        else:
            print(f"id: {key_id}\nhash: {hash_key(key)}", file=stdout)
        return 0
    created = generate_key()
    print(f"# API key for tenant {args.tenant} (shown once, store it now):\n# {created.key}\n"
          f"keys:\n  - id: {created.key_id}\n    hash: {created.key_hash}\n    tenant: {args.tenant}"
          + (f"\n    name: {args.name}" if args.name else ""), file=stdout)
    return 0
