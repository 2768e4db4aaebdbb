"""Fuzzing: whatever the input, the loader returns a Stack or raises InvalidArgument
(StackInvalid is one), never any other exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyswarm.common.errors import InvalidArgument
from pyswarm.manager.stack import load_stack, render_config

_DIR = Path(tempfile.mkdtemp(prefix="stack-fuzz-"))
_KEYS = ["image", "command", "entrypoint", "environment", "env_file", "labels", "ports",
         "volumes", "tmpfs", "networks", "healthcheck", "secrets", "configs", "user",
         "working_dir", "hostname", "stop_grace_period", "stop_signal", "extra_hosts",
         "depends_on", "deploy", "mode", "replicas", "resources", "limits", "reservations",
         "cpus", "memory", "pids", "restart_policy", "condition", "delay", "placement",
         "constraints", "preferences", "spread", "update_config", "rollback_config",
         "endpoint_mode", "target", "published", "protocol", "source", "type", "read_only",
         "tmpfs", "size", "test", "interval", "retries", "disable", "aliases", "external",
         "name", "file", "build", "x-ext", "<<", "web", "db", "uid", "mode"]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.sampled_from(["80:80", "8000-8001:80-81", "./x:/y:ro", "1m30s", "64m", "0.5", "$$",
                     "${A:-b}", "${A:?e}", "$5", "node.role == manager", "global", "host",
                     "/abs", "~/x", "web", "db", "true", "CMD", "0440", "a=b", "[", ""]),
    st.text(max_size=12),
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=6)), children,
                        max_size=5),
    ),
    max_leaves=25,
)


def _check(text: str) -> None:
    path = _DIR / "stack.yml"
    path.write_text(text)
    for call in (load_stack, render_config):
        try:
            call([path], "fuzz", {"A": "1"})  # type: ignore[operator]
        except InvalidArgument:
            pass


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(["web", "db", "x-a"]), _TREES, max_size=3),
       st.dictionaries(st.sampled_from(["networks", "volumes", "secrets", "configs", "x-b"]),
                       _TREES, max_size=2))
def test_random_structures(services: dict[str, Any], top: dict[str, Any]) -> None:
    _check(yaml.safe_dump({"services": services, **top}, allow_unicode=True))


_FRAGMENTS = st.sampled_from(["services:", "\n", "  ", "web:", "image: a", "- ", ": ", "&a ",
                              "*a", "<<: ", "{", "}", "[", "]", ",", "'", '"', "#", "!!int ",
                              "!!str ", "? ", "---", "\t", "deploy:", "replicas: 2",
                              "ports: [80:80]", "%YAML 1.2", "|", ">", "~", "\x00", "é"])


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.lists(_FRAGMENTS, max_size=30).map("".join), st.text(max_size=200)))
def test_random_text(text: str) -> None:
    _check(text)


_HUGE = "9" * 400


def test_extreme_numbers_are_errors_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(f"""
services:
  web:
    image: a
    stop_grace_period: {_HUGE}s
    user: {_HUGE}
    deploy:
      replicas: {2**70}
      resources: {{limits: {{cpus: {_HUGE}, memory: {_HUGE}g, pids: {2**64}}}}}
      restart_policy: {{max_attempts: {2**64}, delay: 300000000000h}}
      update_config: {{max_failure_ratio: .nan, parallelism: 1e400}}
    healthcheck: {{retries: {2**40}}}
    tmpfs: ["/t:size={_HUGE}"]
""")
    try:
        load_stack([path], "x", {})
    except InvalidArgument as exc:
        text = str(exc)
    assert text.count("\n") >= 8, text
