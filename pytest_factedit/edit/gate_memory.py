"""Bytes held by the edits kept behind a model's shared gate: what each kept edit adds to the model's memory.

Four parts: the edits' gains (tensors), the registry's factor tables (the rows allocated for them, per
dtype and device), the gate's index (the trie of subject patterns and the per-edit entries, Python
objects counted with `sys.getsizeof`), and the relation routers' reference states (edit/router.py).
Edits merged into the weights add none of these.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .gate_registry import REGISTRY_ATTRIBUTE, GateRegistry

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def gains_bytes(registry: GateRegistry) -> int:
    """Every kept edit's gains, every stage."""
    return sum(
        gain.numel() * gain.element_size()
        for entry in registry.entries.values()
        for stage in entry.edit.gains.values()
        for gain in stage.values()
    )


def table_bytes(registry: GateRegistry) -> int:
    """The factor tables as allocated (rows grow by doubling), every module, dtype and device."""
    return sum(
        table.numel() * table.element_size()
        for module in registry.modules.values()
        for table, _filled in module.tables.values()
    )


def router_bytes(registry: GateRegistry) -> int:
    """Every kept edit's relation router: its reference states."""
    routers = [entry.edit.router for entry in registry.entries.values()]
    return sum(r.references.numel() * r.references.element_size() for r in routers if r is not None)


def _trie_bytes(node: Any) -> int:
    size = sys.getsizeof(node) + sys.getsizeof(node.children) + sys.getsizeof(node.owners)
    return size + sum(_trie_bytes(child) for child in node.children.values())


def index_bytes(registry: GateRegistry) -> int:
    """The gate's index: each tokenizer group's trie and word flags, and the per-edit entries and maps."""
    groups = sum(_trie_bytes(g.trie.root) + sys.getsizeof(g.flags) for g in registry.groups.values())
    entries = sum(sys.getsizeof(e) for e in registry.entries.values())
    maps = sys.getsizeof(registry.entries) + sys.getsizeof(registry.serial_of)
    return groups + entries + maps


def kept_edit_bytes(model: PreTrainedModel) -> dict[str, int]:
    """The edits behind `model`'s shared gate and the bytes they hold: `edits`, `gains`, `tables`, `index`,
    `routers` (all 0 when no edit is kept behind it)."""
    registry = model.__dict__.get(REGISTRY_ATTRIBUTE)
    if not isinstance(registry, GateRegistry):
        return {"edits": 0, "gains": 0, "tables": 0, "index": 0, "routers": 0}
    return {
        "edits": len(registry.entries),
        "gains": gains_bytes(registry),
        "tables": table_bytes(registry),
        "index": index_bytes(registry),
        "routers": router_bytes(registry),
    }
