"""The package-dir mapping installs every Python folder, and only under `accelpilot`."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    cfg = _setuptools()
    listed = set(cfg["packages"])
    found = set()
    for name, folder in cfg["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    missing = found - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    # The rest are data folders (weights, scenarios, the console's files): listed so setuptools
    # installs them, each with its package-data patterns and no Python of its own.
    for name in listed - found:
        folder = _folder(cfg, name)
        assert folder.is_dir(), f"listed but absent: {name} ({folder})"
        assert name in cfg["package-data"], f"data package {name} has no package-data entry"
        assert not list(folder.glob("*.py")), f"{name} holds Python: give it an __init__.py"
        matched = {f for pattern in cfg["package-data"][name] for f in folder.glob(pattern)}
        assert matched, f"package-data of {name} matches no file in {folder}"


def _folder(cfg: dict, name: str) -> Path:  # type: ignore[type-arg]
    """The source folder of package ``name`` under the package-dir mapping."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        root = cfg["package-dir"].get(".".join(parts[:i]))
        if root is not None:
            return REPO.joinpath(root, *parts[i:])
    raise AssertionError(f"{name} is under no package-dir entry")


def test_one_import_namespace() -> None:
    cfg = _setuptools()
    assert all(p == "accelpilot" or p.startswith("accelpilot.") for p in cfg["packages"])
