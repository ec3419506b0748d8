"""The CLI's check-config: valid files pass, invalid ones name the offending path and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "compose" / "gateway.example.yaml")]) == 0
    assert "2 backends" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "path"), [
    ("backends:\n  - {name: a, kind: sim, models: [m]}\n  - {name: b, kind: vllm, models: [m]}\n",
     "backends[1].url"),
    ("backends:\n  - {name: a, kind: vllm, url: 'ftp://x', models: [m]}\n", "backends[0].url"),
    ("backends:\n  - {name: a, kind: nope, url: 'http://x', models: [m]}\n", "backends[0].kind"),
    ("backends:\n  - {name: a, kind: sim, models: []}\n", "backends[0].models"),
    ("backends:\n  - {name: a, kind: sim, models: [m], wieght: 2}\n", "backends[0].wieght"),
    ("backends: []\n", "backends"),
    ("backends:\n  - {name: a, kind: sim, models: [m]}\nrouting: {default_policy: magic}\n", "routing"),
    ("backends: [\n", "not valid YAML"),
])
def test_invalid_config_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                       path: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["check-config", str(config)]) == 2
    assert path in capsys.readouterr().err
