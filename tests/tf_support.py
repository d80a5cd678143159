"""Helpers shared by the evaluator tests: a silent log and TensorFlow through the evaluator's own importer."""
import importlib.util
from types import ModuleType

import pytest

from evaluations.inception import _import_tensorflow


def quiet(*args: object, **kwargs: object) -> None:
    pass


def require_tensorflow() -> ModuleType:
    """TensorFlow through the evaluator's importer (which loads triton first: the other order segfaults)."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install -r requirements-eval.txt)")
    return _import_tensorflow()
