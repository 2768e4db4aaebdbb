"""What converting one service needs to know about the rest of the stack."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyswarm.manager.stack.diagnostics import Report

NAMESPACE_LABEL = "com.docker.stack.namespace"


@dataclass
class Declared:
    """A top-level network, volume, secret or config: the name it has in the cluster."""

    name: str
    external: bool


@dataclass
class Context:
    report: Report
    stack: str
    env: Mapping[str, str]          # the interpolation environment (process env over .env)
    project_dir: Path               # relative paths resolve here: the first file's folder
    networks: dict[str, Declared] = field(default_factory=dict)
    volumes: dict[str, Declared] = field(default_factory=dict)
    secrets: dict[str, Declared] = field(default_factory=dict)
    configs: dict[str, Declared] = field(default_factory=dict)
    used_networks: list[str] = field(default_factory=list)  # keys, in first-use order

    def scoped(self, name: str) -> str:
        """A stack object's name in the cluster: ``<stack>_<name>``."""
        return f"{self.stack}_{name}"

    def labels(self, own: Mapping[str, str] | None = None) -> dict[str, str]:
        """Labels of an object the stack creates: its own plus the stack namespace."""
        return {**(own or {}), NAMESPACE_LABEL: self.stack}
