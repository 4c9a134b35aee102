"""The architecture contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they bite.

``lint-imports`` runs with the repository's own configuration, once on the real tree and then
on copies of ``core/facegate`` with one offending import added (torch in the gallery format,
an upward import, an unplaced subpackage, ...): each copy must break the contract that names
that rule, and only because of the added line (the same copy passes without it). The copy is
found through ``PYTHONPATH``, which comes before the editable install of the real tree.

Also here: the torch-free contract and the light layer's list (``layers/light/modules.txt``)
agree, and the README's list of torch-free modules is the one generated from that list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import facegate

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
SOURCE = Path(facegate.__file__).resolve().parent
LIGHT = REPO / "layers" / "light"
README_TOOL = LIGHT / "readme_modules.py"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> dict[str, dict[str, object]]:
    """The contracts of pyproject.toml by id."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def lint(root: Path, *contract_ids: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's config on the ``facegate`` found under ``root``."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"lint-imports is not installed beside {sys.executable} (requirements.lock)")
    selected = [arg for cid in contract_ids for arg in ("--contract", cid)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *selected, str(PYPROJECT)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the facegate package under ``tmp_path/src``; returns ``src``."""
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src / "facegate", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def add_line(path: Path, line: str) -> None:
    """Insert ``line`` right after the module's ``from __future__`` import."""
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, path
    path.write_text(text.replace(anchor, f"{anchor}\n{line}\n", 1))


def assert_breaks(
    tree: Path, contract_id: str, offending: str, module: str, line: str, tmp_path: Path
) -> str:
    """The copy keeps ``contract_id``; with ``line`` added to ``module`` it breaks it, and the
    report names the contract and ``offending`` (an import chain or module)."""
    before = lint(tree, contract_id, cwd=tmp_path)
    assert before.returncode == 0, before.stdout + before.stderr
    add_line(tree / Path(*module.split(".")).with_suffix(".py"), line)
    after = lint(tree, contract_id, cwd=tmp_path)
    name = str(contracts()[contract_id]["name"])
    assert after.returncode != 0, after.stdout
    assert f"{name} BROKEN" in " ".join(after.stdout.split()), after.stdout
    assert offending in after.stdout, after.stdout
    return after.stdout


# ----------------------------------------------------------------------------- the real tree


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    done = lint(SOURCE.parent, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in done.stdout


def test_the_contracts_cover_the_rules_of_the_layout() -> None:
    found = contracts()
    assert {"layers", "offline", "serving-not-offline", "core-not-deployment", "torch-free"} <= set(
        found
    )
    assert {"torch", "torchvision", "facenet_pytorch", "onnx"} <= set(
        found["torch-free"]["forbidden_modules"]
    )
    assert found["layers"]["exhaustive"] is True


# ----------------------------------------------------------------------------- they bite


def test_torch_in_the_gallery_breaks_the_torch_free_contract(tree: Path, tmp_path: Path) -> None:
    report = assert_breaks(
        tree,
        "torch-free",
        "facegate.gallery.format -> torch",
        "facegate.gallery.format",
        "import torch",
        tmp_path,
    )
    # Indirect imports count too: storage reaches torch through the gallery format.
    assert "facegate.storage is not allowed to import torch" in report


def test_a_lazy_torch_import_breaks_it_too(tree: Path, tmp_path: Path) -> None:
    """An import inside a function runs as surely as one at the top, only later."""
    assert_breaks(
        tree,
        "torch-free",
        "facegate.pipeline.verify -> torch",
        "facegate.pipeline.verify",
        "def _load():\n    import torch\n\n    return torch\n",
        tmp_path,
    )


def test_a_type_checking_import_is_not_a_dependency(tree: Path, tmp_path: Path) -> None:
    """Imports under ``if TYPE_CHECKING:`` never run (``exclude_type_checking_imports``)."""
    add_line(
        tree / "facegate" / "gallery" / "format.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import torch",
    )
    done = lint(tree, "torch-free", cwd=tmp_path)
    assert done.returncode == 0, done.stdout


def test_an_upward_import_breaks_the_layers(tree: Path, tmp_path: Path) -> None:
    assert_breaks(
        tree,
        "layers",
        "facegate.pipeline.verify -> facegate.storage.keys",
        "facegate.pipeline.verify",
        "import facegate.storage.keys",
        tmp_path,
    )


def test_an_unplaced_subpackage_breaks_the_layers(tree: Path, tmp_path: Path) -> None:
    before = lint(tree, "layers", cwd=tmp_path)
    assert before.returncode == 0, before.stdout
    (tree / "facegate" / "extras").mkdir()
    (tree / "facegate" / "extras" / "__init__.py").write_text('"""Not in any layer."""\n')
    after = lint(tree, "layers", cwd=tmp_path)
    assert after.returncode != 0, after.stdout
    assert "facegate.extras" in after.stdout, after.stdout


def test_serving_importing_training_breaks_its_contract(tree: Path, tmp_path: Path) -> None:
    assert_breaks(
        tree,
        "serving-not-offline",
        "facegate.gallery.search -> facegate.training.losses",
        "facegate.gallery.search",
        "import facegate.training.losses",
        tmp_path,
    )


def test_evaluation_importing_training_breaks_the_offline_layers(
    tree: Path, tmp_path: Path
) -> None:
    assert_breaks(
        tree,
        "offline",
        "facegate.evaluation.metrics -> facegate.training.losses",
        "facegate.evaluation.metrics",
        "import facegate.training.losses",
        tmp_path,
    )


@pytest.mark.parametrize("module", ["facegate_local", "facegate_api", "app.main"])
def test_core_importing_deployment_code_breaks_its_contract(
    tree: Path, tmp_path: Path, module: str
) -> None:
    top = module.partition(".")[0]
    assert_breaks(
        tree,
        "core-not-deployment",
        f"facegate.common -> {top}",
        "facegate.common",
        f"import {module}",
        tmp_path,
    )


def test_an_import_cycle_breaks_the_acyclic_contract(tree: Path, tmp_path: Path) -> None:
    """report -> run -> report: what the evaluation modules did before records.py."""
    assert_breaks(
        tree,
        "acyclic",
        "facegate.evaluation",
        "facegate.evaluation.report",
        "import facegate.evaluation.run",
        tmp_path,
    )


# ----------------------------------------------------------------------------- one list


def light_modules() -> set[str]:
    lines = (
        raw.split("#", 1)[0].strip() for raw in (LIGHT / "modules.txt").read_text().splitlines()
    )
    return {line for line in lines if line}


def source_modules(name: str) -> list[str]:
    """``name`` and, for a package, every module under it, from the source tree."""
    path = SOURCE.parent / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return [name]
    found = []
    for file in sorted(path.rglob("*.py")):
        parts = list(file.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append(".".join(parts))
    assert found, f"no module {name}"
    return found


def test_the_torch_free_contract_names_only_light_modules() -> None:
    """Never importing torch (the contract) implies importing without it (the layer's list),
    so every module the contract covers must be one the light layer ships."""
    listed = light_modules()
    covered = [
        module
        for name in contracts()["torch-free"]["source_modules"]
        for module in source_modules(str(name))
    ]
    missing = sorted(set(covered) - listed)
    assert not missing, f"torch-free by contract but not in layers/light/modules.txt: {missing}"


def readme_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(README_TOOL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_lists_the_light_modules() -> None:
    done = readme_tool("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_check_fails_when_the_list_changes(tmp_path: Path) -> None:
    readme, modules = tmp_path / "README.md", tmp_path / "modules.txt"
    shutil.copy(REPO / "README.md", readme)
    modules.write_text((LIGHT / "modules.txt").read_text() + "facegate.gallery.new_module\n")
    paths = ("--readme", str(readme), "--modules", str(modules))
    done = readme_tool("--check", *paths)
    assert done.returncode == 1
    assert "`new_module`" in done.stdout
    assert readme_tool("--write", *paths).returncode == 0
    assert "`new_module`" in readme.read_text()
    assert readme_tool("--check", *paths).returncode == 0
