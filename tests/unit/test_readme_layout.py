"""README.md "Layout" matches the tree: every folder it names exists, and it names every folder.

Checked at folder level (top-level folders and the subpackages of the Python packages), so a
new module needs no README change but a new package or top-level folder does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("taar", "taar_web", "taar_etl", "taar_dev")
_LISTED = re.compile(r"^( *)([A-Za-z_][\w.-]*)/(?:\s|$)")


def layout_block(readme: str) -> str:
    """The fenced block right after the ``## Layout`` heading."""
    match = re.search(r"^## Layout\n```\n(.*?)^```", readme, re.M | re.S)
    assert match, "README.md has no '## Layout' section with a fenced block"
    return match.group(1)


def listed_folders(block: str) -> set[str]:
    """Folders a layout block lists at line starts: ``name/`` top level, indented ``sub/`` below the last one."""
    folders, parent = set(), None
    for line in block.splitlines():
        match = _LISTED.match(line)
        if not match:
            continue
        indent, name = match.groups()
        if indent:
            assert parent, f"indented {name}/ with no top-level folder above it"
            folders.add(f"{parent}/{name}")
        else:
            parent = name
            folders.add(name)
    return folders


#: Folders of a working tree that are not part of the repository (used without a git index).
_UNTRACKED = {"var", "build", "dist", "node_modules", "__pycache__"}


def tracked_top_level_folders(root: Path) -> set[str]:
    """Top-level folders holding tracked files, hidden ones (.ci, .circleci) excluded."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True,
                                timeout=60).stdout.decode("utf-8")
    except (OSError, subprocess.SubprocessError):  # no git checkout: the folders on disk
        return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                and p.name not in _UNTRACKED and not p.name.endswith(".egg-info")}
    return {name.split("/")[0] for name in listed.split("\0") if "/" in name and not name.startswith(".")}


def subpackages(root: Path) -> set[str]:
    """``package/sub`` for every folder with an ``__init__.py`` below the packages' top level."""
    found = set()
    for package in PACKAGES:
        for init in (root / package).rglob("__init__.py"):
            folder = init.parent.relative_to(root).as_posix()
            if folder != package:
                found.add(folder)
    return found


def test_listed_folders_are_parsed_with_their_parent():
    block = "taar/          library\n               continued: storage/ (stores)\nx_etl/   jobs\n  spark/   helpers\n"
    assert listed_folders(block) == {"taar", "x_etl", "x_etl/spark"}


def test_layout_names_exactly_the_top_level_folders():
    block = layout_block((ROOT / "README.md").read_text(encoding="utf-8"))
    listed = {f for f in listed_folders(block) if "/" not in f}
    assert listed == tracked_top_level_folders(ROOT)


def test_every_listed_subfolder_exists():
    block = layout_block((ROOT / "README.md").read_text(encoding="utf-8"))
    nested = {f for f in listed_folders(block) if "/" in f}
    assert nested, "the layout lists no subfolder (taar_etl/spark/ at least)"
    assert {f for f in nested if not (ROOT / f).is_dir()} == set()


def test_every_subpackage_is_named_in_the_layout():
    block = layout_block((ROOT / "README.md").read_text(encoding="utf-8"))
    missing = {p for p in subpackages(ROOT) if f"{p.rsplit('/', 1)[1]}/" not in block}
    assert missing == set()
