"""The shared interface checks (../shared/contract/*.py), run from the project root when they are present."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "contract", "check_*.py")))


@pytest.mark.skipif(not CHECKS, reason="../shared/contract is not next to this checkout")
@pytest.mark.parametrize("script", CHECKS, ids=os.path.basename)
def test_contract(script):
    res = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
