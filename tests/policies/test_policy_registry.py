"""build_policy: policies by name from config, with options validated at load time."""

from __future__ import annotations

import pytest

from policies.least_loaded import LeastLoaded
from policies.prefix_affinity import PrefixAffinity
from policies.registry import DEFAULT_POLICY, POLICY_NAMES, build_policy
from policies.round_robin import RoundRobin


def test_each_name_builds_its_policy() -> None:
    assert isinstance(build_policy("round_robin", {}), RoundRobin)
    assert isinstance(build_policy("least_loaded", {}), LeastLoaded)
    assert isinstance(build_policy("prefix_affinity", None), PrefixAffinity)
    assert DEFAULT_POLICY in POLICY_NAMES


def test_each_call_builds_a_fresh_instance() -> None:
    assert build_policy("prefix_affinity", {}) is not build_policy("prefix_affinity", {})


def test_options_reach_the_config() -> None:
    policy = build_policy(
        "prefix_affinity", {"block_chars": 64, "load_factor": 2, "w_load": 0.5, "key_blocks": 2.0}
    )
    assert isinstance(policy, PrefixAffinity)
    assert policy.config.block_chars == 64
    assert policy.config.load_factor == 2.0 and isinstance(policy.config.load_factor, float)
    assert policy.config.key_blocks == 2
    least = build_policy("least_loaded", {"choices": 3, "seed": 9})
    assert isinstance(least, LeastLoaded) and least.config.choices == 3


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nope", {}, "unknown routing policy 'nope'"),
        ("prefix_affinity", {"blocks": 3}, "unknown option 'blocks'"),
        ("prefix_affinity", {"block_chars": "64"}, "'block_chars' must be int"),
        ("prefix_affinity", {"block_chars": 64.5}, "'block_chars' must be int"),
        ("prefix_affinity", {"load_factor": True}, "'load_factor' must be a number"),
        ("prefix_affinity", {"load_factor": 0.9}, "load_factor must be >= 1.0"),
        ("prefix_affinity", {"block_chars": 0}, "block_chars must be >= 1"),
        ("prefix_affinity", {"w_miss": -1}, "w_miss and w_load must be >= 0"),
        ("least_loaded", {"choices": 0}, "choices must be >= 1"),
        ("round_robin", {"weight": 1}, "unknown option 'weight' \\(known: none\\)"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy(name, options)
