"""The package's folders are layers: each imports only from the layers before it, and only the
command line knows about itself, Typer and Rich."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qconvert"
VOCABULARY = ("config", "errors", "results", "presets", "progress")
# In order: a module may import from its own layer and the layers before it.
LAYERS = ("vocabulary", "model", "calibration", "providers", "quantization", "measurement", "workflows", "report",
          "cli")
API = "api"  # `from qconvert import name`: the public API, which imports every layer


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "qconvert":
        return ""
    if len(parts) == 1:
        return API
    return "vocabulary" if parts[1] in VOCABULARY else parts[1]


def _module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / submodule.replace(".", "/")).is_dir()
                found.append((node.lineno, submodule if is_module else node.module))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


def test_every_module_belongs_to_a_layer() -> None:
    layers = {_layer(_module_of(p)) for p in MODULES}
    assert layers <= set(LAYERS), layers - set(LAYERS)
    assert len([p for p in PACKAGE.glob("*.py")]) <= 8  # the package's top holds the vocabulary, little else


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    own = LAYERS.index(_layer(_module_of(path)))
    wrong = []
    for line, module in _imports(path):
        layer = _layer(module)
        if layer == API and own < LAYERS.index("cli"):
            wrong.append(f"line {line}: {module} (the public API) from the {LAYERS[own]} layer")
        elif layer in LAYERS and LAYERS.index(layer) > own:
            wrong.append(f"line {line}: {module} ({layer}) from the {LAYERS[own]} layer")
        if own < LAYERS.index("cli") and module.split(".")[0] in ("typer", "rich", "click"):
            wrong.append(f"line {line}: {module} outside qconvert/cli")
    assert not wrong, wrong


def test_the_public_api_is_whole_and_lazy() -> None:
    import subprocess
    import sys

    import qconvert

    assert sorted(qconvert.__all__) == sorted(qconvert._EXPORTS)
    for name in qconvert.__all__:
        assert getattr(qconvert, name) is getattr(__import__(qconvert._EXPORTS[name], fromlist=[name]), name)
    # The command line starts without the heavy libraries: `qconvert --help` stays instant.
    code = "import sys, qconvert.cli.app; print(sorted({'numpy', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
