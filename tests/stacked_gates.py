"""The reference the shared gate (edit/gate_registry.py) must equal bit for bit: each subject-gated edit
with its own `SubjectGate` reading every pass and its own hook on each targeted module, stacked in the
order the edits went on; and the synthetic edits that tests/test_gate_registry.py and bench/gate_scale.py
put behind either."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from pytest_factedit.edit.base import EditRequest
from pytest_factedit.edit.gate import REACHES, SubjectGate
from pytest_factedit.edit.saved_gains import gain_width
from pytest_factedit.edit.settings import EditSettings
from pytest_factedit.edit.subject_gains import SubjectGainEdit, _hooked, subject_gate_for
from pytest_factedit.model.targets import TargetModules, all_layer_targets


def scaling_hook(edit: SubjectGainEdit, name: str, feedforward: bool) -> Any:
    """One edit's hook on one module: its gate's mask scales the input of a feed-forward output
    projection, the output of any other module."""
    module = edit.model.get_submodule(name)
    if feedforward:

        def scale_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (edit.gate.scale(args[0], edit.product(name)),) + tuple(args[1:])

        return module.register_forward_pre_hook(scale_input)

    def scale_output(_module: Any, _args: Any, output: Any) -> Any:
        return edit.gate.scale(output, edit.product(name))

    return module.register_forward_hook(scale_output)


def stack(edit: SubjectGainEdit) -> SubjectGainEdit:
    """`edit` on its model with its own gate and hooks (undone by `edit.remove()`)."""
    try:
        edit.hooks.enter_context(edit.gate.reading(edit.model))
        feedforward = set(edit.targets.feedforward)
        for name in edit.targets.modules:
            edit.hooks.callback(scaling_hook(edit, name, name in feedforward).remove)
    except BaseException:
        edit.remove()
        raise
    return edit


def stack_sealed(edit: SubjectGainEdit, sealed: bool = False) -> SubjectGainEdit:
    """`stack` with the signature of edit/subject_gains.py's `_hooked` (to stand in for it in training)."""
    return stack(edit)


@contextmanager
def stacked(edits: Sequence[SubjectGainEdit]) -> Iterator[None]:
    """Every edit stacked, in order, for the block."""
    with ExitStack() as hooks:
        for edit in edits:
            stack(edit)
            hooks.callback(edit.hooks.close)
        yield


def gated_edit(
    model: Any, gate: SubjectGate, modules: Sequence[str], feedforward: Sequence[str], stages: int, seed: int
) -> SubjectGainEdit:
    """An edit with random gains 1 + 4 * noise, one vector per stage and module (none when stages is 0)."""
    import torch

    targets = TargetModules(tuple(modules), tuple(m for m in feedforward if m in modules), "test")
    edit = SubjectGainEdit(method="test", model=model, gate=gate, targets=targets, settings=EditSettings())
    noise = torch.Generator().manual_seed(seed)
    for stage in ("unlearn", "learn")[:stages]:
        edit.gains[stage] = {
            name: torch.nn.Parameter(
                1 + 4 * torch.randn(gain_width(model.get_submodule(name), name in feedforward), generator=noise),
                requires_grad=False,
            )
            for name in modules
        }
    return edit


def twin(edit: SubjectGainEdit) -> SubjectGainEdit:
    """The same edit (gate, targets, gains) as a fresh handle, for the reference."""
    gate = SubjectGate(edit.gate.patterns, edit.gate.reach, edit.gate.word_flags)
    return SubjectGainEdit(
        method=edit.method, model=edit.model, gate=gate, targets=edit.targets, settings=edit.settings, gains=edit.gains
    )


def synthetic_edits(model: Any, tok: Any, count: int, prompt_ids: set[int]) -> list[SubjectGainEdit]:
    """`count` - 1 edits on distinct 1- to 3-token patterns of ids that the prompts do not hold, spread
    over every layer's modules, and one on "Japan" (which the prompts name), made last."""
    targets = all_layer_targets(model)
    spare = [i for i in range(len(tok)) if i not in prompt_ids]
    rng = random.Random(count)
    patterns: set[tuple[int, ...]] = set()
    while len(patterns) < count - 1:
        patterns.add(tuple(rng.choice(spare) for _ in range(rng.randint(1, 3))))
    flags = subject_gate_for(tok, [EditRequest("Japan", ("Japan is",), ("a",), ("b",))]).word_flags
    edits = []
    for index, pattern in enumerate(sorted(patterns)):
        modules = rng.sample(list(targets.modules), 2)
        reach = REACHES[index % 2]  # the first two reaches: the workload bench/gate_scale.py measured
        gate = SubjectGate([pattern], reach, flags)
        edits.append(gated_edit(model, gate, modules, targets.feedforward, 1, index))
    japan = subject_gate_for(tok, [EditRequest("Japan", ("The capital of Japan is",), ("a",), ("b",))])
    edits.append(gated_edit(model, japan, list(targets.modules), targets.feedforward, 2, count))
    return edits


@contextmanager
def registered(edits: Sequence[SubjectGainEdit], training: Sequence[int] = ()) -> Iterator[None]:
    """The edits behind the shared gate, sealed but those at the `training` indexes (applied whole)."""
    with ExitStack() as hooks:
        for index, edit in enumerate(edits):
            _hooked(edit, sealed=index not in training)
            hooks.callback(edit.remove)
        yield


class KeptStates(dict):
    """The base model's last-token states by (layer, text ids), served to routers as model/state_store.py's
    LastTokenStates serves them."""

    @classmethod
    def of(cls, model: Any, layer: int, texts: Sequence[tuple[int, ...]]) -> KeptStates:
        """Each text's state at `layer`, from a pass of its own on `model` as it is now."""
        import torch

        from pytest_factedit.edit.router import layer_states

        kept = cls()
        for ids in texts:
            kept.add(layer, {ids: layer_states(model, [layer], None, input_ids=torch.tensor([ids]))[layer][0]})
        return kept

    def get(self, layer: int, ids: tuple[int, ...]) -> Any:  # type: ignore[override]
        return super().get((layer, tuple(ids)))

    def add(self, layer: int, found: Any) -> None:
        self.update({(layer, ids): state for ids, state in found.items()})

    def save(self) -> None:
        pass
