"""The light layer (layers/light) and the zip functions that use it.

``layers/light/modules.txt`` lists the facegate modules the layer ships; its Makefile copies
them and pip-installs ``requirements.txt``. The list must be exactly the facegate modules that
import where the layer is all there is: a subprocess in which torch, and every package that
neither the layer's requirements nor the Lambda Python runtime provide, cannot be imported.
A module that starts to import torch (or tqdm, onnx, ...) thus fails here, and so does a new
torch-free module that the list forgets.

The pip part of the layer build is not run here (83 MB of wheels to fetch, 193 MB installed);
the Makefile's copy step is, and so is the compact function's build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

import facegate

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "layers" / "light"
MODULES = LAYER / "modules.txt"
REQUIREMENTS = LAYER / "requirements.txt"
LOCK = REPO / "requirements.lock"
TEMPLATE = REPO / "template.yaml"
SOURCE = Path(facegate.__file__).resolve().parent

#: What the Lambda Python 3.12 runtime itself provides (the AWS SDK and its dependencies).
RUNTIME = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
#: Never in the light layer: the heavy pipeline.
HEAVY = {"torch", "torchvision", "facenet-pytorch", "onnx", "safetensors"}
#: The environment markers of the layer's target (Lambda Python 3.12, x86_64 Linux).
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines (PEP 503 names); anything else in the file is an error."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
            assert match, f"{path.name}: not an exact pin: {raw!r}"
            pins[_norm(match[1])] = match[2]
    return pins


def listed_modules() -> list[str]:
    """modules.txt: one dotted module name a line; blank lines and ``#`` comments ignored."""
    lines = (raw.split("#", 1)[0].strip() for raw in MODULES.read_text().splitlines())
    return [line for line in lines if line]


def all_modules() -> list[str]:
    """Every module of the facegate package, from its source tree."""
    names = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(["facegate", *parts]))
    return names


def layer_top_levels() -> list[str]:
    """Top-level import names of the layer's packages and of the runtime's."""
    provided = set(read_pins(REQUIREMENTS)) | RUNTIME
    return sorted(
        top
        for top, dists in packages_distributions().items()
        if any(_norm(d) in provided for d in dists)
    )


#: Prepended to every probe: a meta-path finder that refuses what the layer does not have.
#: The standard library stays importable, including the modules that are not in
#: ``sys.stdlib_module_names`` (``_sysconfigdata_*``): anything found in its directories.
LAYER_ONLY = """
import importlib.machinery, sys, sysconfig
ALLOWED = frozenset(sys.argv[1].split(","))
STDLIB = tuple(sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}))

def _in_stdlib(name):
    spec = importlib.machinery.PathFinder.find_spec(name)
    origin = (spec.origin or "") if spec is not None else ""
    return origin.startswith(STDLIB) and "-packages" not in origin

class LayerOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top == "facegate" or top in ALLOWED or top in sys.stdlib_module_names:
            return None
        if name == top and _in_stdlib(name):
            return None
        raise ModuleNotFoundError(f"No module named {top!r} (not in the light layer)", name=top)

sys.meta_path.insert(0, LayerOnly())
"""

#: Each module is imported in a child forked from one interpreter: a fresh facegate per
#: module (a failed import can leave half-initialised state behind that would let the next
#: one pass) without an interpreter start per module. The parent first imports the layer's
#: heavy packages, only to save every child the time; one that fails is left to the children.
PRELOAD = [
    "numpy",
    "pyarrow.parquet",
    "pyarrow.compute",
    "PIL.Image",
    "pydantic_settings",
    "boto3",
    "aws_lambda_powertools",
]
FORK_EACH = f"""
import importlib, json, os
for name in {PRELOAD!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
errors = {{}}
for name in sys.argv[2:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            error = "imported torch" if "torch" in sys.modules else None
        except BaseException as exc:
            error = f"{{type(exc).__name__}}: {{exc}}"
        os.write(write, json.dumps(error).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    errors[name] = json.loads(answer) if answer else "the child died"
print(json.dumps(errors))
"""


def probe(
    code: str, *args: str, also: tuple[str, ...] = (), **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` after :data:`LAYER_ONLY` in a fresh interpreter; ``also`` are more
    top-level names to allow (a function's own modules)."""
    allowed = ",".join([*layer_top_levels(), *also])
    return subprocess.run(
        [sys.executable, "-c", LAYER_ONLY + code, allowed, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )


def import_errors(modules: list[str]) -> dict[str, str | None]:
    """``module -> None`` when it imports in the layer environment, else why not."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork (the layer targets Linux)")
    done = probe(FORK_EACH, *modules)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ----------------------------------------------------------------------------- the list


def test_modules_txt_is_exactly_what_imports_in_the_layer() -> None:
    listed = listed_modules()
    assert listed == sorted(set(listed)), "modules.txt: keep it sorted, each module once"
    errors = import_errors(all_modules())
    unknown = sorted(set(listed) - set(errors))
    assert not unknown, f"modules.txt lists modules facegate does not have: {unknown}"
    importable = {name for name, error in errors.items() if error is None}
    broken = {name: errors[name] for name in listed if errors[name] is not None}
    assert not broken, (
        "listed in modules.txt but does not import with only the layer (add the package to "
        f"requirements.txt, or drop the module from the list): {broken}"
    )
    missing = sorted(importable - set(listed))
    assert not missing, f"torch-free and importable in the layer, add to modules.txt: {missing}"


def test_every_package_of_a_listed_module_is_listed() -> None:
    listed = set(listed_modules())
    for name in listed:
        parts = name.split(".")
        for i in range(1, len(parts)):
            assert ".".join(parts[:i]) in listed, f"{name} needs its package {parts[:i]}"


def test_compact_handler_imports_in_the_layer() -> None:
    code = (
        "sys.path.insert(0, sys.argv[2])\n"
        "import facegate_compact\n"
        "assert callable(facegate_compact.handler)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "listed = set(sys.argv[3].split(','))\n"
        "ours = [m for m in sys.modules if m.partition('.')[0] == 'facegate']\n"
        "used = sorted(set(ours) - listed)\n"
        "assert not used, f'the handler uses facegate modules the layer lacks: {used}'\n"
    )
    env_free = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"}
    done = probe(
        code,
        str(REPO / "functions" / "compact"),
        ",".join(listed_modules()),
        also=("facegate_compact",),
        env=env_free,
    )
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- requirements


def test_requirements_are_pinned_to_the_lock() -> None:
    lock = read_pins(LOCK)
    pins = read_pins(REQUIREMENTS)
    assert pins
    for name, version in pins.items():
        assert lock.get(name) == version, (
            f"requirements.txt: {name}=={version}, lock {lock.get(name)}"
        )
    assert not (set(pins) & HEAVY), "the light layer must not ship the heavy pipeline"
    assert not (set(pins) & {"boto3", "botocore"}), "the Lambda runtime provides boto3"


def test_requirements_are_complete() -> None:
    """The Makefile installs with ``--no-deps``: every dependency must be listed (or come
    with the runtime), as the venv's metadata of the same pinned versions declares them."""
    pins = read_pins(REQUIREMENTS)
    for name in pins:
        for text in requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
                continue
            dependency = _norm(requirement.name)
            assert dependency in pins or dependency in RUNTIME, f"{name} needs {dependency}"
            if dependency in pins:
                assert requirement.specifier.contains(pins[dependency]), f"{name}: {text}"


# ----------------------------------------------------------------------------- the builds


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", *args], capture_output=True, text=True, timeout=120, check=False)


def _module_files(module: str) -> list[str]:
    """The files the layer holds for ``module``, relative to ``python/``."""
    relative = Path(*module.split("."))
    if (SOURCE.parent / relative / "__init__.py").is_file():
        package = SOURCE.parent / relative
        data = [p.name for p in package.glob("*.json")]
        # A data folder (no __init__.py, e.g. calibration/<detector>/) travels with it.
        data += [
            f"{p.parent.name}/{p.name}"
            for p in package.glob("*/*.json")
            if not (p.parent / "__init__.py").is_file()
        ]
        return [str(relative / "__init__.py"), *(str(relative / d) for d in sorted(data))]
    return [str(relative.with_suffix(".py"))]


def test_makefile_copies_the_listed_modules(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    done = _make("-C", str(LAYER), "copy-facegate", f"ARTIFACTS_DIR={artifacts}")
    assert done.returncode == 0, done.stdout + done.stderr
    root = artifacts / "python"
    copied = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    expected = sorted(f for module in listed_modules() for f in _module_files(module))
    assert copied == expected
    for name in expected:
        assert (root / name).read_bytes() == (SOURCE.parent / name).read_bytes(), name
    # The copy on its own is an importable facegate: the listed modules come from it.
    code = (
        "import importlib\n"
        "for name in sys.argv[2].split(','):\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.argv[3]), (name, module.__file__)\n"
    )
    done = probe(
        code, ",".join(listed_modules()), str(root), env={"PYTHONPATH": str(root)}, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr


def test_layer_build_needs_artifacts_dir() -> None:
    done = _make("-C", str(LAYER), "copy-facegate", "ARTIFACTS_DIR=")
    assert done.returncode != 0 and "ARTIFACTS_DIR" in done.stderr


def test_compact_function_build_ships_only_its_module(tmp_path: Path) -> None:
    done = _make(
        "-C",
        str(REPO / "functions" / "compact"),
        "build-CompactFunction",
        f"ARTIFACTS_DIR={tmp_path}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facegate_compact.py"]


# ----------------------------------------------------------------------------- the template


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: {suffix: node.value})


def _resources() -> dict[str, dict[str, Any]]:
    return yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]


def _zip_functions() -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in _resources().items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"].get("PackageType", "Zip") == "Zip"
    }


def _makefile_targets(folder: Path) -> set[str]:
    text = (folder / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:", text, flags=re.MULTILINE))


def test_zip_functions_are_built_with_their_handler_and_the_layer() -> None:
    functions = _zip_functions()
    assert "CompactFunction" in functions
    resources = _resources()
    for name, resource in functions.items():
        props = resource["Properties"]
        code = REPO / props["CodeUri"]
        module = props["Handler"].rsplit(".", 1)[0]
        assert (code / f"{module}.py").is_file(), f"{name}: no {module}.py in {code}"
        if resource.get("Metadata", {}).get("BuildMethod") == "makefile":
            assert f"build-{name}" in _makefile_targets(code), f"{name}: no build target"
        for layer in props.get("Layers", []):
            layer_resource = resources[layer["Ref"]]
            assert layer_resource["Type"] == "AWS::Serverless::LayerVersion"
            assert props["Runtime"] in layer_resource["Properties"]["CompatibleRuntimes"]


def test_layers_have_their_build_target() -> None:
    layers = {
        name: r for name, r in _resources().items() if r["Type"] == "AWS::Serverless::LayerVersion"
    }
    assert "LightLayer" in layers
    for name, resource in layers.items():
        assert resource["Metadata"]["BuildMethod"] == "makefile", name
        folder = REPO / resource["Properties"]["ContentUri"]
        assert f"build-{name}" in _makefile_targets(folder), f"{name}: no build-{name} target"
