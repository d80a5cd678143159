"""Helpers shared by the evaluator tests: a silent log and TensorFlow through the evaluator's own importer."""
import importlib.util

import pytest


def quiet(*args, **kwargs):
    pass


def require_tensorflow():
    """TensorFlow through the evaluator's importer (which loads triton first: the other order segfaults)."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install -r requirements-eval.txt)")
    from evaluations.inception import _import_tensorflow
    return _import_tensorflow()
