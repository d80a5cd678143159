"""The requirement files and constraints.txt: each requirement parses, the split is core / eval extra / dev,
every top-level requirement is pinned exactly in constraints.txt, torch and torchvision are pinned as a
matching pair, and CI and the README install with the constraints."""

import importlib.metadata
import os

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("requirements.txt", "requirements-eval.txt", "requirements-dev.txt")


def lines_of(name):
    """The non-comment, non-empty lines of a file of the repo."""
    with open(os.path.join(ROOT, name)) as f:
        stripped = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in stripped if line]


def requirements(name):
    """(included files, Requirement list) of one requirement file; '-r other.txt' lines are included files."""
    included = []
    reqs = []
    for line in lines_of(name):
        if line.startswith("-r "):
            included.append(line[3:].strip())
        else:
            reqs.append(Requirement(line))
    return included, reqs


def names(reqs):
    return {canonicalize_name(r.name) for r in reqs}


def pins():
    """constraints.txt as {canonical name: Requirement}."""
    out = {}
    for line in lines_of("constraints.txt"):
        req = Requirement(line)
        key = canonicalize_name(req.name)
        assert key not in out, f"{req.name} pinned twice"
        out[key] = req
    return out


def pinned_version(req):
    [spec] = req.specifier
    return Version(spec.version)


def test_the_split_core_eval_dev():
    core_files, core = requirements("requirements.txt")
    eval_files, extra = requirements("requirements-eval.txt")
    dev_files, dev = requirements("requirements-dev.txt")
    assert core_files == [] and eval_files == []
    assert dev_files == ["requirements.txt", "requirements-eval.txt"]
    # REPA's encoder is core; TensorFlow is the eval extra only; the test and lint tools are dev only
    assert {"torch", "timm", "numpy", "diffusers", "accelerate", "scikit-learn"} <= names(core)
    assert names(extra) == {"tensorflow"}
    assert names(dev) == {"pytest", "ruff", "tensorboard"}
    assert not names(core) & (names(extra) | names(dev))


def test_every_line_parses_and_nothing_is_pinned_outside_constraints():
    for name in FILES:
        for req in requirements(name)[1]:
            assert not req.specifier and not req.marker, f"{name}: {req} (pins belong in constraints.txt)"


def test_constraints_pin_exact_versions():
    found = pins()
    assert len(found) > 10
    for key, req in found.items():
        assert not req.extras and not req.marker and not req.url, req
        assert len(req.specifier) == 1, req
        [spec] = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, req
        # a public version: it matches the local builds (2.14.1 matches 2.14.1+cu130) and PyPI's alike
        assert not Version(spec.version).local, req
    assert list(found) == sorted(found)


def test_every_top_level_requirement_is_pinned():
    top = set()
    for name in FILES:
        top |= names(requirements(name)[1])
    missing = sorted(top - set(pins()))
    assert not missing, f"not pinned in constraints.txt: {missing}"
    # and what timm brings in beside torch, among them torchvision
    assert {"torchvision", "huggingface-hub", "pyyaml", "safetensors"} <= set(pins())


def test_torch_and_torchvision_are_a_matching_pair():
    found = pins()
    torch_v = pinned_version(found["torch"])
    vision_v = pinned_version(found["torchvision"])
    # torch 2.N ships with torchvision 0.(N + 15): 2.0 / 0.15, ..., 2.14 / 0.29
    assert torch_v.major == 2 and vision_v.major == 0
    assert vision_v.minor == torch_v.minor + 15, (torch_v, vision_v)
    # where the pinned torchvision is installed, its own requirement on torch accepts the pinned torch
    try:
        installed = Version(importlib.metadata.version("torchvision"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torchvision is not installed")
    if installed.public != str(vision_v):
        pytest.skip(f"torchvision {installed} installed, {vision_v} pinned")
    wants = [Requirement(r) for r in importlib.metadata.requires("torchvision") or []]
    [on_torch] = [r for r in wants if canonicalize_name(r.name) == "torch" and not r.marker]
    assert on_torch.specifier.contains(torch_v, prereleases=True), (on_torch, torch_v)


def test_ci_and_readme_install_with_the_constraints():
    ci = lines_of(".ci/run")
    assert "python -m pip install -q -r requirements-dev.txt -c constraints.txt" in ci
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "pip install -r requirements.txt && python train.py --preset digits" in readme
    assert "pip install -r requirements-dev.txt && python -m pytest -q tests" in readme
    assert "-c constraints.txt" in readme
