"""Shared test plumbing.

Tests marked ``root`` drive the real kernel (namespaces, cgroups, overlayfs, nftables). CI
runs as root, so they run there; on a machine without root they are skipped, loudly.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: run the suite as root (CI does)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
