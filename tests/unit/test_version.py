"""The version the code reports is the one the package is built with."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import resizer

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_pyproject_tomls_and_the_installed_ones() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["poetry"]["version"]
    assert resizer.__version__ == declared
    assert version("resizer") == declared
