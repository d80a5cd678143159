"""A self-contained repo: no tracked file points to documents the repo does not ship. (The code style is
ruff's, configured in ruff.toml and run by .ci/run.)"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Documents outside the repo. The strings are split so that this file does not match itself.
FOREIGN = ("../" + "shared", "DESIGN" + ".md", "reference" + "/")
# The one file allowed to point outside: it runs the shared interface checks when they sit next to the
# checkout.
ALLOWED = {"tests/test_contract.py": "../" + "shared/contract"}
BINARY = (".png", ".jpg", ".jpeg", ".npz", ".npy", ".pt", ".pb", ".safetensors")


def tracked_files() -> list[str]:
    """Paths (relative to the repo root) of the files git tracks, or of every file outside hidden folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return sorted(p for p in out.stdout.decode().split("\0") if p)
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") or d == ".ci"]
            paths += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files]
        return sorted(p.replace(os.sep, "/") for p in paths)


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_there_are_files_to_check():
    assert {"train.py", "tests/conftest.py", "README.md"} <= set(tracked_files())


@pytest.mark.parametrize("needle", FOREIGN)
def test_nothing_points_to_documents_outside_the_repo(needle):
    hits = []
    for path in tracked_files():
        if path.endswith(BINARY) or not os.path.isfile(os.path.join(ROOT, path)):
            continue
        try:
            text = read(path)
        except UnicodeDecodeError:
            continue
        allowed = ALLOWED.get(path)
        for n, line in enumerate(text.splitlines(), start=1):
            if needle in line and not (allowed and allowed in line):
                hits.append(f"{path}:{n}: {line.strip()}")
    assert not hits, f"'{needle}' names a document that is not in the repo:\n" + "\n".join(hits)
