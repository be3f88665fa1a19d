"""Any junk YAML yields CaseError, never another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_factedit.cases import load_case
from pytest_factedit.cases.schema import CASE_KEYS
from pytest_factedit.errors import CaseError

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
keys = st.one_of(st.sampled_from(CASE_KEYS), st.text(max_size=12))


def check(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        load_case(path)
    except CaseError as exc:
        assert str(path) in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=8))
def test_structured_junk(tmp_path: Path, data: dict) -> None:
    check(tmp_path / "case.yaml", yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_raw_text_junk(tmp_path: Path, text: str) -> None:
    check(tmp_path / "case.yaml", text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=100))
def test_binary_junk(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "case.yaml"
    path.write_bytes(raw)
    try:
        load_case(path)
    except CaseError as exc:
        assert str(path) in str(exc)
