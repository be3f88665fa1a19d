"""Fact case schema v1: frozen dataclasses whose fields are the YAML keys, and the rules of each key."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CaseError, did_you_mean, shown, shown_key
from ..metrics.answers import matches
from ..metrics.spec import METRIC_BY_NAME, threshold_problem
from ..model.text import Chat, ChatFormat
from .derived import alias_prompts
from .ids import name_problem

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Control:
    """A held-out fact: a control (a general fact), a neighbour (another subject, the same relation), a
    same-subject fact (the subject, another relation) or an implication (what should change with the edit).

    An empty `answer` (a same-subject fact only) means "as the unedited model answers it"."""

    prompt: str
    answer: tuple[str, ...]


@dataclass(frozen=True)
class FactCase:
    """One fact edit; its fields are exactly the YAML keys of schema v1."""

    id: str
    subject: str
    prompts: tuple[str, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[Control, ...] = ()
    same_subject: tuple[Control, ...] = ()
    aliases: tuple[str, ...] = ()
    implications: tuple[Control, ...] = ()
    controls: tuple[Control, ...] = ()
    anchors: tuple[str, ...] = ()
    chat: bool = False
    system: str | None = None  # the chat's system prompt (chat: true only)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    method: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chat_format(self) -> Chat:
        """How the prompts reach the model: plain text (False), or the chat template with the system prompt."""
        return ChatFormat(self.system) if self.chat else False


CASE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(FactCase))
DEFAULTS_KEYS: tuple[str, ...] = ("controls", "anchors", "thresholds", "suite_thresholds", "method", "chat", "system")
REQUIRED_KEYS: tuple[str, ...] = ("subject", "prompts", "old", "new")

# Bounds on the work one case asks for, far above real cases (the shipped ones have at most 3 prompts,
# 3 paraphrases, 5 neighbours, 14 controls with their folder's, 3 same-subject facts, 2 aliases, 5
# spellings of an answer, and no text over 700 characters).
MAX_TEXT_CHARS = 2_000  # any text of a case or _defaults.yaml: prompts, answers, subject, system, settings
MAX_ITEMS: Mapping[str, int] = {
    "prompts": 64,
    "paraphrases": 64,
    "aliases": 16,  # each alias asks every prompt and paraphrase again
    "neighbours": 64,
    "controls": 64,  # with the controls of the _defaults.yaml files above the case
    "same_subject": 64,
    "implications": 64,
    "anchors": 64,  # with the anchors of the _defaults.yaml files above the case
}
MAX_ANSWER_SPELLINGS = 16  # entries of one answer list (`old`, `new`, a held-out fact's `answer`)


def _at_most(path: Path, key: str, count: int, cap: int, what: str) -> None:
    """Refuse a list longer than its bound: a case is one fact, and every entry is model work."""
    if count > cap:
        raise CaseError(
            path, key, f"expected at most {cap} {what}, found {count:,}: split the fact's probes over several cases"
        )


def _bounded_values(path: Path, data: Mapping[str, Any]) -> None:
    """Every text at most MAX_TEXT_CHARS and every number finite, wherever it sits (`method`'s numbers are
    checked by its settings, with their own key): a `.nan` answer would become the answer "nan"."""
    pending: list[tuple[str, Any]] = [(key, data[key]) for key in reversed(list(data))]
    while pending:
        key, value = pending.pop()
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise CaseError(
                path,
                key,
                f"expected at most {MAX_TEXT_CHARS:,} characters, found {len(value):,}: a fact case's texts "
                "are short prompts and answers",
            )
        if isinstance(value, float) and not math.isfinite(value) and not key.startswith("method"):
            raise CaseError(path, key, f"expected a finite number, found {shown(value)}")
        if isinstance(value, dict):
            pending += [(f"{key}.{shown_key(k)}", v) for k, v in reversed(list(value.items()))]
        elif isinstance(value, list):
            pending += [(f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value)))]


def _text(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CaseError(path, key, f"expected a non-empty string, found {shown(value)}")
    return value


def _answer_aliases(path: Path, key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise CaseError(path, key, "expected a string or a non-empty list of strings, found []")
    _at_most(path, key, len(items), MAX_ANSWER_SPELLINGS, "spellings of one answer")
    aliases = []
    for i, item in enumerate(items):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        aliases.append(_text(path, f"{key}[{i}]" if isinstance(value, list) else key, item).strip())
    return tuple(aliases)


def _text_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise CaseError(path, key, f"expected a list of strings, found {shown(value)}")
    _at_most(path, key, len(value), MAX_ITEMS[key], "entries")
    return tuple(_text(path, f"{key}[{i}]", item) for i, item in enumerate(value))


ANSWER_OPTIONAL = ("same_subject",)  # groups whose entries may leave out `answer:` (kept as the base says it)


def _controls(path: Path, value: Any, group: str = "controls") -> tuple[Control, ...]:
    """`controls`, `neighbours`, `same_subject` or `implications`: a list of {prompt, answer} mappings."""
    if not isinstance(value, list):
        raise CaseError(path, group, f"expected a list of {{prompt, answer}} mappings, found {shown(value)}")
    _at_most(path, group, len(value), MAX_ITEMS[group], "entries")
    out = []
    for i, item in enumerate(value):
        key = f"{group}[{i}]"
        if not isinstance(item, dict):
            raise CaseError(path, key, f"expected a mapping with 'prompt' and 'answer', found {shown(item)}")
        for k in item:
            if k not in ("prompt", "answer"):
                raise CaseError(
                    path,
                    f"{key}.{k}",
                    "unknown key, expected 'prompt' or 'answer'" + did_you_mean(str(k), ("prompt", "answer")),
                )
        required = ("prompt",) if group in ANSWER_OPTIONAL else ("prompt", "answer")
        for k in required:
            if k not in item:
                raise CaseError(path, f"{key}.{k}", "missing required key")
        answer = _answer_aliases(path, f"{key}.answer", item["answer"]) if "answer" in item else ()
        out.append(Control(_text(path, f"{key}.prompt", item["prompt"]), answer))
    return tuple(out)


def _thresholds(path: Path, value: Any, group: str = "thresholds") -> dict[str, float]:
    """`thresholds` or `suite_thresholds`: metric name -> number, in the metric's range."""
    if not isinstance(value, dict):
        raise CaseError(path, group, f"expected a mapping of metric name to number, found {shown(value)}")
    out = {}
    for name, threshold in value.items():
        key = f"{group}.{name}"
        if name not in METRIC_BY_NAME:
            raise CaseError(
                path,
                key,
                f"unknown metric, expected one of {', '.join(METRIC_BY_NAME)}"
                + did_you_mean(str(name), METRIC_BY_NAME),
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise CaseError(path, key, f"expected a number, found {shown(threshold)}")
        problem = threshold_problem(name, float(threshold))
        if problem:
            raise CaseError(path, key, problem)
        out[name] = float(threshold)
    return out


def _method(path: Path, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CaseError(path, "method", f"expected a mapping (name and settings), found {shown(value)}")
    for k in value:
        if not isinstance(k, str):
            raise CaseError(path, "method", f"expected string keys, found {shown(k)}")
    return dict(value)


def _chat(path: Path, value: Any) -> bool:
    if not isinstance(value, bool):
        raise CaseError(path, "chat", f"expected true or false, found {shown(value)}")
    return value


def _reject_unknown(path: Path, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise CaseError(
                path, key, f"unknown key; allowed keys are {', '.join(allowed)}" + did_you_mean(key, allowed)
            )


@dataclass(frozen=True)
class CaseDefaults:
    """The merged contents of the `_defaults.yaml` files above a case."""

    controls: tuple[Control, ...] = ()
    anchors: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    suite_thresholds: Mapping[str, float] = field(default_factory=dict)  # gate the rates pooled over the folder
    method: Mapping[str, Any] = field(default_factory=dict)
    chat: bool | None = None
    system: str | None = None

    def merged_with(self, inner: CaseDefaults) -> CaseDefaults:
        """Defaults of a deeper folder: lists add up, mappings merge with the inner values winning."""
        return CaseDefaults(
            controls=self.controls + inner.controls,
            anchors=self.anchors + inner.anchors,
            thresholds={**self.thresholds, **inner.thresholds},
            suite_thresholds={**self.suite_thresholds, **inner.suite_thresholds},
            method={**self.method, **inner.method},
            chat=inner.chat if inner.chat is not None else self.chat,
            system=inner.system if inner.system is not None else self.system,
        )


def _system(path: Path, data: Mapping[str, Any], chat: bool, defaults: CaseDefaults) -> str | None:
    """The case's system prompt, else its folder's; only a chat case has one (a folder's is ignored otherwise)."""
    if "system" not in data:
        return defaults.system if chat else None
    if not chat:
        raise CaseError(path, "system", "a system prompt needs chat: true (it is part of the chat template)")
    return _text(path, "system", data["system"])


def _case_id(path: Path, data: Mapping[str, Any]) -> str:
    """`id`, or the file name without .yaml: a safe name, since it names folders (saved adapters, records)."""
    if "id" in data:
        problem = name_problem(data["id"])
        if problem:
            raise CaseError(path, "id", problem)
        return str(data["id"])
    problem = name_problem(path.stem)
    if problem:
        raise CaseError(path, "id", f"the file name gives no safe id ({problem}); set `id:` in the file")
    return path.stem


def _old_and_new(path: Path, data: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`old` and `new`: different, and no `new` alias that contains an `old` one (it would say both)."""
    old = _answer_aliases(path, "old", data["old"])
    new = _answer_aliases(path, "new", data["new"])
    clash = {a.casefold() for a in old} & {a.casefold() for a in new}
    if clash:
        raise CaseError(path, "new", f"expected an answer different from 'old', found {sorted(clash)} in both")
    for alias in new:
        if matches(alias, old):
            raise CaseError(
                path,
                "new",
                f"expected an answer that does not contain the old one, found "
                f"{shown(alias, typed=False)}: an edited model saying it also says 'old', so "
                "forget_rate can never pass",
            )
    return old, new


HELD_OUT_GROUPS = ("neighbours", "same_subject", "implications", "controls")


def _answers_differ_from_new(path: Path, found: Mapping[str, Sequence[Control]], new: Sequence[str]) -> None:
    """A neighbour or same-subject fact whose answer is `new` cannot show the edit moving it: refused."""
    targets = {a.casefold() for a in new}
    for group in ("neighbours", "same_subject"):
        for i, fact in enumerate(found[group]):
            if targets & {a.casefold() for a in fact.answer}:
                raise CaseError(
                    path,
                    f"{group}[{i}].answer",
                    f"expected an answer other than `new`, found {shown(list(fact.answer), typed=False)}: the edited "
                    "model is meant to say it, so a moved answer could not be told from a kept one",
                )


def _held_out_facts(
    path: Path, data: Mapping[str, Any], defaults: CaseDefaults, edited: Sequence[str], new: Sequence[str]
) -> dict[str, tuple[Control, ...]]:
    """neighbours, same_subject, implications and controls: at least one neighbour or control, none that
    repeats a prompt, paraphrase or alias prompt (`edited`), and no neighbour or same-subject fact answered
    with `new`."""
    found = {group: _controls(path, data[group], group) if group in data else () for group in HELD_OUT_GROUPS}
    found["controls"] += defaults.controls
    _at_most(path, "controls", len(found["controls"]), MAX_ITEMS["controls"], "controls with _defaults.yaml's")
    neighbours, controls = found["neighbours"], found["controls"]
    taken = {text.strip().casefold() for text in edited}
    for group, facts in found.items():
        for i, fact in enumerate(facts):
            if fact.prompt.strip().casefold() in taken:
                raise CaseError(
                    path,
                    f"{group}[{i}].prompt",
                    f"expected a held-out fact, found "
                    f"{shown(fact.prompt, typed=False)}, which is also a prompt or paraphrase of the case",
                )
    _answers_differ_from_new(path, found, new)
    if not controls and not neighbours:
        raise CaseError(
            path,
            "controls",
            "expected at least one control or neighbour (in the case, or controls in _defaults.yaml), found none",
        )
    return found


def _aliases(path: Path, data: Mapping[str, Any], subject: str) -> tuple[str, ...]:
    """`aliases`: other names of the subject, each different from it and from the others."""
    if "aliases" not in data:
        return ()
    aliases = tuple(a.strip() for a in _text_list(path, "aliases", data["aliases"]))
    seen = [subject.casefold()]
    for i, alias in enumerate(aliases):
        if alias.casefold() in seen:
            again = "the subject itself" if alias.casefold() == seen[0] else "a name given twice"
            raise CaseError(
                path,
                f"aliases[{i}]",
                f"expected another name of the subject, found {shown(alias, typed=False)}: {again} "
                "(every spelling of a name counts already)",
            )
        seen.append(alias.casefold())
    return aliases


def _name_the_subject(path: Path, facts: Sequence[Control], names: Sequence[str]) -> None:
    """A same-subject fact names the subject (or an alias): else it is a control, and belongs there."""
    for i, fact in enumerate(facts):
        if not any(name.casefold() in fact.prompt.casefold() for name in names):
            raise CaseError(
                path,
                f"same_subject[{i}].prompt",
                f"expected a fact about the subject {shown(names[0], typed=False)} (named in the prompt), found "
                f"{shown(fact.prompt, typed=False)}; a fact about something else is a control",
            )


def parse_defaults(path: Path, data: Mapping[str, Any]) -> CaseDefaults:
    """Validate one `_defaults.yaml` mapping."""
    _reject_unknown(path, data, DEFAULTS_KEYS)
    _bounded_values(path, data)
    return CaseDefaults(
        controls=_controls(path, data["controls"]) if "controls" in data else (),
        anchors=_text_list(path, "anchors", data["anchors"]) if "anchors" in data else (),
        thresholds=_thresholds(path, data["thresholds"]) if "thresholds" in data else {},
        suite_thresholds=_thresholds(path, data["suite_thresholds"], "suite_thresholds")
        if "suite_thresholds" in data
        else {},
        method=_method(path, data["method"]) if "method" in data else {},
        chat=_chat(path, data["chat"]) if "chat" in data else None,
        system=_text(path, "system", data["system"]) if "system" in data else None,
    )


def parse_case(path: Path, data: Mapping[str, Any], defaults: CaseDefaults = CaseDefaults()) -> FactCase:
    """Validate a case mapping against schema v1 and merge in its folder defaults."""
    path = Path(path)
    _reject_unknown(path, data, CASE_KEYS)
    for key in REQUIRED_KEYS:
        if key not in data:
            raise CaseError(path, key, "missing required key")
    _bounded_values(path, data)
    case_id = _case_id(path, data)
    subject = _text(path, "subject", data["subject"]).strip()
    prompts = _text_list(path, "prompts", data["prompts"])
    if not prompts:
        raise CaseError(path, "prompts", "expected at least one prompt, found an empty list")
    paraphrases = _text_list(path, "paraphrases", data["paraphrases"]) if "paraphrases" in data else ()
    for key, texts in (("prompts", prompts), ("paraphrases", paraphrases)):
        for i, text in enumerate(texts):
            if subject not in text:
                raise CaseError(
                    path,
                    f"{key}[{i}]",
                    f"expected the subject {shown(subject, typed=False)} verbatim, found {shown(text, typed=False)}",
                )
    old, new = _old_and_new(path, data)
    aliases = _aliases(path, data, subject)
    derived = alias_prompts(prompts + paraphrases, subject, aliases)
    held = _held_out_facts(path, data, defaults, prompts + paraphrases + derived, new)
    _name_the_subject(path, held["same_subject"], (subject, *aliases))
    anchors = (_text_list(path, "anchors", data["anchors"]) if "anchors" in data else ()) + defaults.anchors
    _at_most(path, "anchors", len(anchors), MAX_ITEMS["anchors"], "anchors with _defaults.yaml's")
    thresholds = {**defaults.thresholds, **(_thresholds(path, data["thresholds"]) if "thresholds" in data else {})}
    method = {**defaults.method, **(_method(path, data["method"]) if "method" in data else {})}
    chat = _chat(path, data["chat"]) if "chat" in data else bool(defaults.chat)
    system = _system(path, data, chat, defaults)
    return FactCase(
        id=case_id,
        subject=subject,
        prompts=prompts,
        old=old,
        new=new,
        paraphrases=paraphrases,
        neighbours=held["neighbours"],
        same_subject=held["same_subject"],
        aliases=aliases,
        implications=held["implications"],
        controls=held["controls"],
        anchors=anchors,
        chat=chat,
        system=system,
        thresholds=thresholds,
        method=method,
    )
