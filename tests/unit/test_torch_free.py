"""Light functions must not pay for torch: the modules of the light layer import without it.

The one list of torch-free modules is ``layers/light/modules.txt`` (tests/unit/test_layer.py
checks that it is exactly what imports in the layer); this file checks the same modules in
this environment, with torch installed but refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import run_without_torch

MODULES_TXT = Path(__file__).resolve().parents[2] / "layers" / "light" / "modules.txt"


def light_modules() -> list[str]:
    """The dotted names of ``modules.txt`` (blank lines and ``#`` comments ignored)."""
    lines = (raw.split("#", 1)[0].strip() for raw in MODULES_TXT.read_text().splitlines())
    return [line for line in lines if line]


TORCH_FREE = light_modules()


def test_the_list_names_the_torch_free_core():
    """The layers that must stay torch-free are in the list at all (not emptied by mistake)."""
    for module in (
        "facegate.gallery.format",
        "facegate.storage.subjects",
        "facegate.common",
        "facegate.batch.manifest",
        "facegate.pipeline.verify",
        "facegate.errors",
    ):
        assert module in TORCH_FREE


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module):
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or f"{module} imported torch"


def test_torch_free_even_when_torch_is_unavailable():
    """Simulate a Lambda without torch: a meta-path hook refuses it (and the run fails if torch
    or the pipeline got imported all the same)."""
    code = (
        f"import {', '.join(TORCH_FREE)}\n"
        "import facegate.pipeline.verify as v, numpy as np\n"
        "print(round(v.cosine_similarity(np.ones(3), np.ones(3)), 6))\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr or "a light module imported a network runtime"
    assert done.stdout.strip() == "1.0"
