"""Every section reference in the repository names a section heading of ``docs/spec.md``.

Code, docstrings, ``--help`` texts, tests and documents cite the contract as
"SPEC" followed by a section sign and a number. README.md states that its bare
section signs refer to the same document, and the spec cross-references itself
the same way, so every section sign followed by a section id counts, whatever
precedes it. Ranges (``3.6-3.7``, en dash too) count both ends; in a list each
element carries its own section sign and is found on its own.

The headings are parsed from the spec at test time (other changes add sections),
never listed here. This file writes the section sign as ``\\N{SECTION SIGN}`` so
its own examples are not scanned as references.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "spec.md"
SIGN = "\N{SECTION SIGN}"

# A section id: "4", "5.7.1", or an appendix letter with optional numbers ("A", "A.3").
_ID = r"(?:\d+|[A-Z])(?:\.\d+)*"
# "## 5. Recommenders", "### 5.7 RecommendationManager", "## Appendix A. Decisions".
_HEADING = re.compile(rf"^#{{2,6}}\s+(?:Appendix\s+)?({_ID})\.?(?:\s|$)")
# A reference, optionally the start of a range: "3.6-3.7" (hyphen or en dash, no spaces), or
# "2.7 - <sign>2.8" with spaces when the second end carries its own sign.
_DASH = "[-\N{EN DASH}]"
_REFERENCE = re.compile(
    rf"{SIGN}\s*({_ID})(?:{_DASH}(\d+(?:\.\d+)*)|\s*{_DASH}\s*{SIGN}\s*({_ID}))?"
)
# JSON files escape the sign (openapi.json).
_JSON_ESCAPED_SIGN = re.compile(r"\\u00a7", re.IGNORECASE)

# Folders that are not part of the repository's text even when no git index is available.
_SKIPPED_DIRS = {".git", ".venv", "var", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache", "build"}


def spec_sections(text: str) -> set[str]:
    """Section ids of every Markdown heading (level 2 and deeper) that starts with an id."""
    sections = set()
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match:
            sections.add(match.group(1))
    return sections


def _complete_range_end(start: str, end: str) -> str:
    """``3.6-7`` means 3.6 to 3.7: a shorter second end keeps the first end's leading parts."""
    start_parts, end_parts = start.split("."), end.split(".")
    if len(end_parts) < len(start_parts):
        end_parts = start_parts[: len(start_parts) - len(end_parts)] + end_parts
    return ".".join(end_parts)


def references(line: str) -> list[str]:
    """Section ids cited on one line, both ends of a range included, in order of appearance."""
    line = _JSON_ESCAPED_SIGN.sub(SIGN, line)
    found = []
    for match in _REFERENCE.finditer(line):
        start, short_end, signed_end = match.groups()
        found.append(start)
        if short_end is not None:
            found.append(_complete_range_end(start, short_end))
        elif signed_end is not None:
            found.append(signed_end)
    return found


def repository_files(root: Path, use_git: bool = True) -> list[Path]:
    """Tracked files (``git ls-files``); a walk of the tree when there is no git checkout."""
    try:
        if not use_git:
            raise OSError("git not wanted")
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True, timeout=60
        ).stdout.decode("utf-8")
        paths = [root / name for name in listed.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        paths = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
            paths.extend(Path(folder) / name for name in files)
    return sorted(path for path in paths if path.is_file())


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def dangling_references(root: Path, sections: set[str], use_git: bool = True) -> tuple[int, list[str]]:
    """(number of references seen, ``file:line: <sign>id`` for each one naming no section)."""
    seen, dangling = 0, []
    for path in repository_files(root, use_git):
        text = _text(path)
        if text is None or SIGN not in text and not _JSON_ESCAPED_SIGN.search(text):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for section in references(line):
                seen += 1
                if section not in sections:
                    dangling.append(f"{path.relative_to(root)}:{number}: {SIGN}{section}")
    return seen, dangling


# --- the parser itself -------------------------------------------------------------------------


def test_headings_give_their_section_ids():
    text = "\n".join([
        "# Title (no id)",
        "## 0. Conventions and glossary",
        "### 1.2 Repository layout (one monorepo)",
        "#### 5.7.1 Test ids",
        "### 8.0 Common rules",
        "## Appendix A. Decisions of resolved issues",
        "### A.3 Issue 4",
        "```",
        "## 99.9 inside a code fence is not a heading",
        "```",
        "Text mentioning 7.7 is not a heading.",
    ])
    assert spec_sections(text) == {"0", "1.2", "5.7.1", "8.0", "A", "A.3"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"see SPEC {SIGN}5.3.", ["5.3"]),
        (f"(SPEC {SIGN}2.4 step 6)", ["2.4"]),
        (f"SPEC {SIGN}3.6-3.7", ["3.6", "3.7"]),
        (f"SPEC {SIGN}2.7\N{EN DASH}2.8", ["2.7", "2.8"]),
        (f"SPEC {SIGN}2.7 \N{EN DASH} {SIGN}2.8", ["2.7", "2.8"]),
        (f"SPEC {SIGN}4.6-7", ["4.6", "4.7"]),
        (f"SPEC {SIGN}8.5, {SIGN}8.6", ["8.5", "8.6"]),
        (f"{SIGN}3.3/{SIGN}3.4 and {SIGN}13", ["3.3", "3.4", "13"]),
        (f"SPEC {SIGN}8.0: 1 failure, 2 usage", ["8.0"]),
        (f"rules 1-4 ({SIGN}7.4)", ["7.4"]),
        (f"{SIGN}9.2 - 3 clients", ["9.2"]),
        (f"appendix {SIGN}A.2", ["A.2"]),
        ('"See SPEC \\u00a74."', ["4"]),
        ("no reference here, 3.6-3.7", []),
    ],
)
def test_references_on_a_line(line, expected):
    assert references(line) == expected


def test_a_dangling_reference_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "a.py").write_text(f'"""Doc.\n\nSee SPEC {SIGN}1.2 and SPEC {SIGN}1.9-1.10."""\n', encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(b"\0" + f"{SIGN}7.7".encode())
    # The tree walk (no git index) must find a.py and skip the binary file.
    seen, dangling = dangling_references(tmp_path, {"1.2", "1.10"}, use_git=False)
    assert seen == 3
    assert dangling == [f"a.py:3: {SIGN}1.9"]


# --- the repository ---------------------------------------------------------------------------


def test_every_section_reference_names_a_spec_heading():
    sections = spec_sections(SPEC.read_text(encoding="utf-8"))
    # The spec's top-level sections 0-13 exist; an empty set would mean the heading parser broke.
    assert {str(n) for n in range(14)} <= sections
    seen, dangling = dangling_references(ROOT, sections)
    # Code and documents cite the spec a few hundred times; zero would mean the scan broke.
    assert seen > 100
    assert not dangling, f"{len(dangling)} references name no heading of docs/spec.md:\n" + "\n".join(dangling)
