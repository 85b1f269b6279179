"""Walking a model's graphs: every node and initializer, subgraph bodies included, and sizes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

# Protobuf cannot serialize a message of 2 GiB or more; past this, weights go to a sidecar file.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class GraphNode:
    """A node with the path of the (sub)graph it lives in: '' for the main graph, else e.g. 'if/then_branch'."""

    node: onnx.NodeProto
    graph_path: str

    @property
    def in_subgraph(self) -> bool:
        return bool(self.graph_path)


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The bodies a node holds (If branches, Loop and Scan bodies), each with its attribute's label:
    `name`, or `name[i]` for a list of graphs."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.name, attr.g
        for i, body in enumerate(attr.graphs):
            yield f"{attr.name}[{i}]", body


def node_label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def _join(where: str, label: str) -> str:
    return f"{where}/{label}" if where else label


def iter_graphs(graph: onnx.GraphProto, where: str = "", *,
                label: Callable[[onnx.NodeProto], str] = node_label) -> Iterator[tuple[onnx.GraphProto, str]]:
    """A graph, then every body inside it, depth first, each with its path: `where` for `graph`,
    then `label(node)/attribute` per level, joined by '/'."""
    yield graph, where
    yield from iter_bodies(graph.node, where, label=label)


def iter_bodies(nodes: Iterable[onnx.NodeProto], where: str = "", *,
                label: Callable[[onnx.NodeProto], str] = node_label) -> Iterator[tuple[onnx.GraphProto, str]]:
    """Every body that `nodes` hold, and the bodies inside those, as `iter_graphs` names them."""
    for node in nodes:
        for attr, body in subgraphs(node):
            yield from iter_graphs(body, _join(where, f"{label(node)}/{attr}"), label=label)


def iter_scopes(graph: onnx.GraphProto, outer: Mapping[str, onnx.TensorProto] | None = None,
                ) -> Iterator[tuple[onnx.GraphProto, dict[str, onnx.TensorProto]]]:
    """A graph, then every body inside it, depth first (as `iter_graphs`), each with the initializers
    of the graphs around it that it can read by name (outer scope; inner names shadow outer ones).
    A body's scope is taken when the walk reaches it, so initializers a caller adds to a graph as it
    goes are in scope for the bodies inside."""
    scope = dict(outer or {})
    yield graph, scope
    inner = {**scope, **{t.name: t for t in graph.initializer}}
    for node in graph.node:
        for _, body in subgraphs(node):
            yield from iter_scopes(body, inner)


def iter_nodes(graph: onnx.GraphProto, graph_path: str = "") -> Iterator[GraphNode]:
    """Every node of a graph, each followed by the nodes of the If/Loop/Scan bodies it holds."""
    for node in graph.node:
        yield GraphNode(node, graph_path)
        for attr, body in subgraphs(node):
            yield from iter_nodes(body, _join(graph_path, f"{node_label(node)}/{attr}"))


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(n.in_subgraph for n in iter_nodes(model.graph))


def all_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of the main graph and of every subgraph."""
    for graph, _ in iter_graphs(model.graph):
        yield from graph.initializer


def tensor_numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's data takes, without materialising it (a byte per element when the type has
    no fixed size, such as strings)."""
    from qconvert.model.external import expected_bytes

    need = expected_bytes(tensor)
    return tensor_numel(tensor) if need is None else need


def model_nbytes(model: onnx.ModelProto) -> int:
    """Serialized size estimate: protobuf without weights plus the weights."""
    return sum(tensor_nbytes(t) for t in all_initializers(model)) + 64 * sum(1 for _ in iter_nodes(model.graph))


def typed_names(graph: onnx.GraphProto, element: int) -> set[str]:
    """Names of `element` type in a typed graph (inputs, outputs, value_info, initializers)."""
    found = {v.name for v in (*graph.input, *graph.output, *graph.value_info)
             if v.type.tensor_type.elem_type == element}
    return found | {t.name for t in graph.initializer if t.data_type == element}


def sort_nodes(graph: onnx.GraphProto) -> None:
    """The graph's nodes in topological order, otherwise in their order (passes that add nodes append
    them at the end); left as they are when there is a cycle."""
    import heapq

    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for source in {producer[name] for name in node.input if name in producer} - {i}:
            waiting[i] += 1
            readers.setdefault(source, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) == len(nodes) and order != sorted(order):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def name_unnamed(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: exclusions, keep lists and reports need one."""
    taken = {gn.node.name for gn in iter_nodes(model.graph) if gn.node.name}
    counter = 0
    for gn in iter_nodes(model.graph):
        if not gn.node.name:
            while f"{gn.node.op_type}_{counter}" in taken:
                counter += 1
            gn.node.name = f"{gn.node.op_type}_{counter}"
            taken.add(gn.node.name)


def holds_type(model: onnx.ModelProto, element: int) -> bool:
    """Whether an input, output, typed value or weight of any graph of `model` is of `element` type."""
    return any(typed_names(graph, element) for graph, _ in iter_graphs(model.graph))
