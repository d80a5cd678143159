"""The house style that ruff does not check (ruff.toml covers pycodestyle and pyflakes), over every tracked
file: lines of at most 110 columns with no exception (ruff lets a URL or a noqa pragma run over), no parallel
assignment of three or more names, and a self-contained repo (no pointer to documents it does not ship)."""
import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_COLUMNS = 110
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


def python_files() -> list[str]:
    return [p for p in tracked_files() if p.endswith(".py") and not p.startswith("studies/")]


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_there_are_files_to_check():
    files = python_files()
    assert "train.py" in files and "tests/conftest.py" in files
    assert not [p for p in files if p.startswith("studies/")]


def test_no_line_is_longer_than_110_columns():
    long = [f"{path}:{n}: {len(line)} columns"
            for path in python_files()
            for n, line in enumerate(read(path).splitlines(), start=1) if len(line) > MAX_COLUMNS]
    assert not long, "lines over 110 columns:\n" + "\n".join(long)


def parallel_assignments(source: str) -> list[int]:
    """Line numbers of `a, b, c = x, y, z`: a tuple of three or more targets given a tuple of values.
    Unpacking one value (`q, k, v = t.unbind(0)`) is not one."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
            and any(isinstance(t, ast.Tuple) and len(t.elts) >= 3 for t in node.targets)]


def test_the_parallel_assignment_check_tells_the_two_forms_apart():
    assert parallel_assignments("a, b, c = 1, 2, 3\n") == [1]
    assert parallel_assignments("a, b = 1, 2\nq, k, v = t.unbind(0)\nx = 1, 2, 3\n") == []


def test_no_parallel_assignment_of_three_or_more_names():
    found = [f"{path}:{n}" for path in python_files() for n in parallel_assignments(read(path))]
    assert not found, "one name per assignment:\n" + "\n".join(found)


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
