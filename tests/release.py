"""Helpers for the release tests: read what the Dockerfiles say, so tests run exactly that."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def instruction(name: str, keyword: str) -> list[str]:
    """The JSON (exec form) argument list of the last ``keyword`` instruction of a Dockerfile."""
    matches = re.findall(rf"^{keyword}\s+(\[.*\])\s*$", dockerfile(name), flags=re.M)
    return json.loads(matches[-1])


def version_json_command(name: str, target: Path) -> str:
    """The Dockerfile's shell command that writes version.json, redirected to ``target``."""
    text = dockerfile(name).replace("\\\n", " ")
    match = re.search(r"(printf .*?)> /app/version.json", text)
    return f"{match.group(1)}> {target}"


def build_args(name: str) -> list[str]:
    return re.findall(r"^ARG (\w+)=", dockerfile(name), flags=re.M)
