"""Reader for a user's Python function: `path/to/file.py:function` or `package.module:function`.

The function takes no arguments and returns an iterable of `{input name: array}`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

from qconvert.errors import DataError, UsageError


def is_plugin_reference(source: str) -> bool:
    module, sep, func = source.rpartition(":")
    if not sep or not module or not func.isidentifier():
        return False
    return module.endswith(".py") or all(part.isidentifier() for part in module.split("."))


def _import(module_ref: str) -> ModuleType:
    if module_ref.endswith(".py"):
        path = Path(module_ref)
        if not path.is_file():
            raise UsageError(f"plugin file not found: {path}", hint="give path/to/file.py:function")
        spec = importlib.util.spec_from_file_location(f"qconvert_plugin_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import plugin file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_ref)
    except ImportError as exc:
        raise UsageError(f"cannot import plugin module {module_ref!r}: {exc}",
                         hint="install the package or give path/to/file.py:function") from exc


def load_plugin(source: str) -> Callable[[], Iterator[Mapping[str, object]]]:
    module_ref, _, func_name = source.rpartition(":")
    try:
        module = _import(module_ref)
    except (SyntaxError, Exception) as exc:
        if isinstance(exc, UsageError):
            raise
        raise DataError(f"plugin {module_ref} failed to import: {type(exc).__name__}: {exc}",
                        hint="fix the plugin; run it with python to see the traceback") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"plugin {module_ref} has no function {func_name!r}")

    def samples() -> Iterator[Mapping[str, object]]:
        try:
            items = func()
            for item in items:
                if not isinstance(item, Mapping):
                    raise DataError(f"plugin {source} yielded {type(item).__name__}, expected a dict "
                                    "{input name: array}")
                yield item
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"plugin {source} failed: {type(exc).__name__}: {exc}",
                            hint="fix the plugin; run it with python to see the traceback") from exc

    return samples
