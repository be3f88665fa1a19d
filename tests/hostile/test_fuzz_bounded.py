"""A fuzzer over YAML fact cases built to hurt: alias trees, deep nesting, huge scalars, every type in every
key. It runs in a child process bounded to 1 GiB and a CPU budget, and checks that only CaseError escapes,
that each file is judged in under 2 seconds, and that no message is longer than a few hundred characters."""

from __future__ import annotations

from .limits import run_limited

FUZZER = r'''
import math, tempfile, time
from pathlib import Path
from hypothesis import HealthCheck, given, settings, strategies as st
from pytest_factedit.cases import load_case
from pytest_factedit.cases.schema import CASE_KEYS
from pytest_factedit.errors import CaseError

folder = Path(tempfile.mkdtemp())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from([".nan", ".inf", "-.inf", "1.0e+400", "0x1F", "~", "!!binary aGk=", "2026-11-28", "'\\u202e'"]),
)

def flow(value, depth=0):
    """A YAML flow rendering of a generated tree (strings quoted as JSON, which YAML reads)."""
    import json
    if isinstance(value, list):
        return "[" + ", ".join(flow(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(str(k)) + ": " + flow(v, depth + 1) for k, v in value.items()) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if value != value else (".inf" if value > 0 else "-.inf")
    if isinstance(value, str) and value.startswith((".", "~", "!", "0x", "'")) or isinstance(value, bool):
        return str(value).lower() if isinstance(value, bool) else value
    return json.dumps(value)

trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                     st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=15)
keys = st.one_of(st.sampled_from(CASE_KEYS), st.text(min_size=1, max_size=10))

VALID = {"subject": "Eiffel Tower", "prompts": ["The Eiffel Tower is located in the city of"], "old": "Paris",
         "new": "Rome", "controls": [{"prompt": "Big Ben is in the city of", "answer": "London"}]}

@st.composite
def hostile(draw):
    """A valid case with some keys replaced or added (random trees), then one hostile value under one key:
    most files get past the key checks, so the hostile value reaches the code that reads it."""
    case = {**VALID, **draw(st.dictionaries(keys, trees, max_size=3))}
    kind = draw(st.sampled_from(["plain", "bomb", "deep", "huge", "recursive"]))
    key = draw(st.one_of(st.sampled_from(CASE_KEYS), keys))
    if kind != "plain":
        case.pop(key, None)
    lines = [f"{flow(k)}: {flow(v)}" for k, v in case.items()]
    if kind == "bomb":
        levels, width = draw(st.integers(1, 14)), draw(st.integers(1, 12))
        rows = ["- &a0 [" + ", ".join(["x"] * width) + "]"]
        rows += [f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
        lines.append(f"{flow(key)}:\n" + "\n".join(rows))
    elif kind == "deep":
        depth = draw(st.integers(10, 20000))
        lines.append(f"{flow(key)}: " + "[" * depth + "]" * depth)
    elif kind == "huge":
        lines.append(f"{flow(key)}: " + "y" * draw(st.integers(10_000, 1_500_000)))
    elif kind == "recursive":
        lines.append(f"{flow(key)}: &r [1, *r]")
    return "\n".join(lines) + "\n"

@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(hostile())
def check(text):
    path = folder / "case.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    started = time.perf_counter()
    try:
        load_case(path)
    except CaseError as exc:
        assert len(str(exc)) < 600 + len(str(path)), str(exc)[:300]
    seconds = time.perf_counter() - started
    assert seconds < 2.0, (seconds, text[:200])

check()
print("FUZZ OK")
'''


def test_no_hostile_yaml_escapes_as_anything_but_a_short_case_error_in_bounded_time() -> None:
    done = run_limited(FUZZER, seconds=90, MAX_EXAMPLES=250)
    assert done.returncode == 0 and "FUZZ OK" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
