"""Every package folder is listed in pyproject.toml: an editable install finds a missing
one anyway, a wheel would not."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"common": "pyswarm.common", "proto": "pyswarm.proto", "worker": "pyswarm.worker",
              "manager": "pyswarm.manager", "cli": "pyswarm.cli"}


def test_every_package_folder_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = set()
    for folder, package in COMPONENTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
