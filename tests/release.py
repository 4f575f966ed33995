"""Helpers for the release tests: read what the Dockerfiles, .dockerignore and CI say, so tests run exactly that."""

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def instructions(name: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` of every Dockerfile instruction in order (continuations joined, comments gone)."""
    lines = [line for line in dockerfile(name).splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(args.split())))
    return found


def instruction(name: str, keyword: str) -> list[str]:
    """The JSON (exec form) argument list of the last ``keyword`` instruction of a Dockerfile."""
    return json.loads([args for kw, args in instructions(name) if kw == keyword][-1])


def version_json_command(name: str, target: Path) -> str:
    """The Dockerfile's shell command that writes version.json, redirected to ``target``."""
    text = dockerfile(name).replace("\\\n", " ")
    match = re.search(r"(printf .*?)> /app/version.json", text)
    return f"{match.group(1)}> {target}"


def build_args(name: str) -> list[str]:
    return re.findall(r"^ARG (\w+)=", dockerfile(name), flags=re.M)


# --------------------------------------------------------------------------- build context and COPY


def _ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _matches(path: str, pattern: str) -> bool:
    parts = path.split("/")
    if pattern.startswith("**/"):
        return any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
    # a pattern matches a path or any of its parent directories (Docker's rule)
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def in_build_context(path: str) -> bool:
    """Whether ``path`` (relative to the repository) is sent to the daemon (.dockerignore, last rule wins)."""
    included = True
    for negated, pattern in _ignore_rules():
        if _matches(path, pattern):
            included = negated
    return included


def build_context() -> list[str]:
    """Files of the build context of a checkout (tracked or new, not git-ignored) that .dockerignore lets through."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(p for p in tracked.splitlines() if in_build_context(p) and (ROOT / p).is_file())


def copy_sources(args: str) -> tuple[list[str], str]:
    parts = args.split()
    return parts[:-1], parts[-1]


def replay_build(name: str, workdir: Path, run) -> list[tuple[int, str, list[str]]]:
    """Replay the Dockerfile's COPY instructions into ``workdir`` (from the build context) and hand each
    ``RUN`` that installs Python packages to ``run(command, workdir)``; returns ``(index, command, files
    present in workdir at that moment)`` for every such RUN."""
    context = build_context()
    runs = []
    for index, (keyword, args) in enumerate(instructions(name)):
        if keyword == "COPY":
            sources, dest = copy_sources(args)
            target = workdir / dest.removeprefix("./") if dest not in ("./", ".") else workdir
            for source in sources:
                files = [p for p in context if p == source or p.startswith(source.rstrip("/") + "/")]
                for rel in files:
                    inside = Path(rel).relative_to(source) if rel != source else Path(Path(rel).name)
                    out = target / inside if (dest.endswith("/") or rel != source) else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ROOT / rel, out)
        elif keyword == "RUN" and "pip install" in args:
            command = args.split(" && printf", 1)[0]
            present = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
            runs.append((index, command, present))
            run(command, workdir)
    return runs
