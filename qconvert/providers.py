"""Execution providers: what this onnxruntime offers (built in, or from plugin packages such as
`onnxruntime-qnn`), sessions on them, and where a model's nodes really ran. Every onnxruntime
session qconvert makes comes from here: `create_session` on a provider, `cpu_session` for
qconvert's own runs; `quiet_onnxruntime` keeps onnxruntime's chatter off stdout.

A provider is named by its full name (`QNNExecutionProvider`) or its alias (`qnn`): the name without
"ExecutionProvider", lower-cased. Plugin packages are found, not listed by hand: any installed
`onnxruntime_*` module with `get_library_path()` and `get_ep_names()` (the convention of the plugin
packages onnxruntime publishes) is registered with `onnxruntime.register_execution_provider_library`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import pkgutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from qconvert.config import CPU, EPConfig, alias
from qconvert.errors import EnvironmentFailure, ModelError, first_line
from qconvert.model.graph import holds_type, iter_graphs, typed_names
from qconvert.results import Placement, onnxruntime_distribution

if TYPE_CHECKING:
    import onnx


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Send everything printed to stdout while onnxruntime works to stderr, at the file-descriptor
    level too (its calibrators `print`, some native banners write to fd 1), and silence the
    advice onnxruntime's quantizer logs on the root logger ("consider pre-processing")."""
    root = logging.getLogger()
    level = root.level
    if not _verbose():  # with --verbose or --debug, onnxruntime's advice shows
        root.setLevel(max(level, logging.ERROR))
    sys.stdout.flush()
    saved_fd = None
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real fd 1 (embedded interpreters): Python-level redirection still applies
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        root.setLevel(level)


def _verbose() -> bool:
    return logging.getLogger("qconvert").getEffectiveLevel() <= logging.INFO


def quiet_native_logs() -> None:
    """Keep onnxruntime's C++ log (warnings such as "Removing initializer … It is not used by any
    node", written to stderr past Python's logging) to errors in this process, to warnings with
    --verbose: they would drown qconvert's own messages."""
    with contextlib.suppress(ImportError):
        import onnxruntime

        onnxruntime.set_default_logger_severity(2 if _verbose() else 3)  # warnings with --verbose


def signature(args: Iterable[Any]) -> list[tuple[str, str, int | None]]:
    """Name, type and rank of each onnxruntime NodeArg (session inputs or outputs): what two models
    must share to be fed the same data."""
    return [(a.name, a.type, None if a.shape is None else len(a.shape)) for a in args]


# Ops that exist only in quantized graphs: what "quantized nodes" counts in a placement.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
    "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu",
    "QLinearSigmoid", "QLinearSoftmax", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "MatMulNBits", "QAttention", "QOrderedMatMul",
})




class ProviderUnavailableError(EnvironmentFailure):
    """The execution provider asked for is not in this onnxruntime build nor in a plugin package."""


@dataclass(frozen=True)
class ProviderInfo:
    name: str  # onnxruntime's name, e.g. QNNExecutionProvider
    alias: str  # what --ep takes, e.g. qnn
    source: str  # "onnxruntime <version>" or the plugin package and its version
    devices: tuple[str, ...]  # what the provider reports it can run on, e.g. "CPU (AMD)"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "alias": self.alias, "source": self.source, "devices": list(self.devices)}


@dataclass(frozen=True)
class _Plugin:
    module: ModuleType
    package: str
    ep_names: tuple[str, ...]

    def default_options(self, options: dict[str, str]) -> dict[str, str]:
        """QNN needs a backend; the NPU (HTP) one unless the user chose another."""
        htp = getattr(self.module, "get_qnn_htp_path", None)
        if callable(htp) and not {"backend_path", "backend_type"} & options.keys():
            return {"backend_path": str(htp())}
        return {}


@functools.cache
def _plugins() -> tuple[_Plugin, ...]:
    """Installed plugin packages; importing one is cheap (it only locates its shared library)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    owners = packages_distributions()
    found = []
    for module_info in pkgutil.iter_modules():
        if not module_info.name.startswith("onnxruntime_"):
            continue
        try:
            module = importlib.import_module(module_info.name)
        except Exception:  # noqa: BLE001 - a broken unrelated package must not break qconvert
            continue
        library, names = getattr(module, "get_library_path", None), getattr(module, "get_ep_names", None)
        if not (callable(library) and callable(names)):
            continue
        dist = (owners.get(module_info.name) or [module_info.name])[0]
        try:
            package = f"{dist} {version(dist)}"
        except PackageNotFoundError:
            package = dist
        found.append(_Plugin(module, package, tuple(str(n) for n in names())))
    return tuple(found)


@functools.cache
def _register(plugin: _Plugin) -> None:
    """Once per process: onnxruntime refuses a second registration under the same name."""
    import onnxruntime as ort

    for name in plugin.ep_names:
        try:
            ort.register_execution_provider_library(name, plugin.module.get_library_path())
        except Exception as exc:
            raise EnvironmentFailure(f"{plugin.package} did not load: {first_line(exc)}",
                                     hint=f"reinstall it (pip install --force-reinstall {plugin.package.split()[0]})"
                                     ) from exc


def _plugin_for(name: str) -> _Plugin | None:
    return next((p for p in _plugins() if name in p.ep_names), None)


def _devices(name: str) -> tuple[str, ...]:
    import onnxruntime as ort

    found = [f"{d.device.type.name} ({d.device.vendor})" for d in ort.get_ep_devices() if d.ep_name == name]
    if name == "OpenVINOExecutionProvider":  # the OpenVINO build reports its devices itself
        from onnxruntime.capi import _pybind_state

        ids = getattr(_pybind_state, "get_available_openvino_device_ids", None)
        found += [str(d) for d in ids()] if callable(ids) else []
    return tuple(found)


def list_providers() -> list[ProviderInfo]:
    """Every execution provider available here, built-in ones first, with the devices it sees."""
    import onnxruntime as ort

    for plugin in _plugins():
        _register(plugin)
    builtin = f"{onnxruntime_distribution()} {ort.__version__}"
    infos = []
    for name in ort.get_available_providers():
        owner = _plugin_for(name)
        infos.append(ProviderInfo(name, alias(name), owner.package if owner else builtin, _devices(name)))
    return infos


def resolve(provider: str) -> ProviderInfo:
    """The provider named by `provider` (full name or alias, any case), or a clear error naming
    what is available."""
    wanted = alias(provider)
    if wanted == alias(CPU):  # always there: skip plugin discovery on the common path
        import onnxruntime as ort

        return ProviderInfo(CPU, wanted, f"{onnxruntime_distribution()} {ort.__version__}", ())
    available = list_providers()
    for info in available:
        if info.alias == wanted:
            return info
    raise ProviderUnavailableError(
        f"execution provider {provider!r} is not available; this onnxruntime offers "
        f"{', '.join(f'{i.alias} ({i.name})' for i in available)}",
        hint="install the package that ships it (onnxruntime-openvino, onnxruntime-qnn, …); "
             "`qconvert providers` lists what is installed")


KERNEL_LISTING = "onnxruntime"  # the build whose kernel listing is known to work


@functools.cache
def typed_kernels(provider: str, element: str) -> frozenset[tuple[str, str]] | None:
    """(domain, op type) of every kernel this onnxruntime build registers for `provider` (full name)
    that takes `element` tensors (`float16`, `bfloat16`); None when it registers no kernel at all
    for the provider (one compiled as a whole graph, such as OpenVINO's, or one not built in), or
    when the build cannot list its kernels: only the `onnxruntime` wheel's listing is relied on
    (onnxruntime-openvino 1.24's crashes the process)."""
    if onnxruntime_distribution() != KERNEL_LISTING:
        return None
    from onnxruntime.capi import onnxruntime_pybind11_state as native

    kernels = [k for k in native.get_all_opkernel_def() if k.provider == provider]
    if not kernels:
        return None
    wanted = f"tensor({element})"
    return frozenset((k.domain or "", k.op_name) for k in kernels
                     if any(wanted in types for types in k.type_constraints.values()))


def has_kernel(node: onnx.NodeProto, kernels: frozenset[tuple[str, str]]) -> bool:
    """Whether a provider with these 16-bit `kernels` runs `node` without casts (Casts and Constants need none)."""
    return node.op_type in ("Cast", "Constant") or (
        "" if node.domain == "ai.onnx" else node.domain, node.op_type) in kernels


def cpu_casts(model: onnx.ModelProto, element: str = "float16") -> tuple[int, int] | None:
    """For a typed model: how many nodes read or write `element` tensors, and how many of those
    onnxruntime's CPU provider has no `element` kernel for (it runs them in float32, between casts);
    None when this onnxruntime cannot say (`typed_kernels`)."""
    import onnx

    kernels = typed_kernels(CPU, element)
    if kernels is None:
        return None
    wanted = onnx.TensorProto.BFLOAT16 if element == "bfloat16" else onnx.TensorProto.FLOAT16
    nodes = casted = 0
    for graph, _ in iter_graphs(model.graph):
        typed = typed_names(graph, wanted)
        for node in graph.node:
            if node.op_type not in ("Cast", "Constant") and any(t in typed for t in (*node.input, *node.output)):
                nodes += 1
                casted += not has_kernel(node, kernels)
    return nodes, casted


def _is_bfloat16(model: Path) -> bool:
    """Whether the model computes in bfloat16: one of its inputs, outputs or weights is bfloat16."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: onnxruntime's own error says more
        return False
    return holds_type(proto, onnx.TensorProto.BFLOAT16)


def create_session(model: str | Path, ep: EPConfig) -> Any:
    """An onnxruntime session on `ep`, with every node the provider cannot take on the CPU
    provider, recording which provider took which node (see `placement`)."""
    import onnxruntime as ort

    info = resolve(ep.provider)
    options = ort.SessionOptions()
    options.intra_op_num_threads = ep.threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    provider_options = dict(ep.options)
    plugin = _plugin_for(info.name)
    try:
        if plugin is not None:
            _register(plugin)
            devices = [d for d in ort.get_ep_devices() if d.ep_name == info.name]
            options.add_provider_for_devices(devices, {**plugin.default_options(provider_options),
                                                       **provider_options})
            return ort.InferenceSession(str(model), options)
        providers: list[Any] = [(info.name, provider_options)]
        providers += [] if info.name == CPU else [CPU]
        return ort.InferenceSession(str(model), options, providers=providers)
    except Exception as exc:
        if not Path(model).is_file():
            raise ModelError(f"{model} does not exist", hint="check the path") from exc
        if info.name == CPU and _is_bfloat16(Path(model)):
            raise ModelError(f"{model} is a bfloat16 model, and onnxruntime's CPU provider has no bfloat16 kernels "
                             f"for its ops ({first_line(exc)})",
                             hint="run it on a provider that has them (--ep cuda, …); on the CPU, check the "
                                  "float16 form (qconvert convert --to fp16)") from exc
        where = f"{info.name} with options {provider_options}" if provider_options else info.name
        raise ModelError(f"{model} cannot be loaded on {where}: {first_line(exc)}",
                         hint="check the model with `qconvert inspect` and the --ep-option values") from exc


def cpu_session(model: str | Path | bytes, *, threads: int = 0, weights: Path | None = None) -> Any:
    """A session on the CPU provider for qconvert's own runs of a model (load checks, calibration,
    analysis, the search's measurements): graph optimisations off, so it is fast to create and every
    tensor exists under its own name; `threads` 0 lets onnxruntime choose; `weights`: where a model
    given as bytes finds its external data. Load errors are onnxruntime's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if weights is not None:  # a model passed as bytes reads its external data from this folder
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights))
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=[CPU])


def check_loads(model: Path, *, failure: str, hint: str) -> None:
    """Refuse to ship a model onnxruntime's CPU provider cannot load: a ModelError "`failure`:
    <onnxruntime's first line>" with `hint`."""
    try:
        with quiet_onnxruntime():
            cpu_session(model)
    except Exception as exc:
        raise ModelError(f"{failure}: {first_line(exc)}", hint=hint) from exc


def placement(session: Any, provider: ProviderInfo) -> Placement | None:
    """Where `session` (from `create_session` on `provider`) put its nodes, counted from
    onnxruntime's own record of the partitioning: nodes a provider compiled into one subgraph still
    count one by one. None on the CPU provider, where there is nothing to place."""
    if provider.name == CPU:
        return None
    record = getattr(session, "get_provider_graph_assignment_info", None)
    if record is None:
        raise EnvironmentFailure("this onnxruntime cannot report which provider ran which node",
                                 hint="upgrade onnxruntime (or the provider's onnxruntime package)")
    on_provider: Counter[str] = Counter()
    on_cpu: Counter[str] = Counter()  # the only other provider a session from create_session has
    for subgraph in record():
        (on_provider if subgraph.ep_name == provider.name else on_cpu).update(n.op_type for n in subgraph.get_nodes())
    nodes_on_provider = sum(on_provider.values())
    quantized_on_provider = sum(c for op, c in on_provider.items() if op in QUANTIZED_OPS)
    return Placement(
        provider=provider.name,
        nodes=nodes_on_provider + sum(on_cpu.values()),
        nodes_on_provider=nodes_on_provider,
        quantized_nodes=quantized_on_provider + sum(c for op, c in on_cpu.items() if op in QUANTIZED_OPS),
        quantized_on_provider=quantized_on_provider,
        cpu_op_types=dict(on_cpu.most_common()),
    )
