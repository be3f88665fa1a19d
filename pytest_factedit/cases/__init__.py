"""Fact cases: the YAML schema (`schema.py`), reading case files (`loader.py`), CounterFact import."""

from .loader import DEFAULTS_FILE, claim_id, defaults_for, is_case_file, load_case, read_yaml_mapping
from .schema import SCHEMA_VERSION, CaseDefaults, Control, FactCase, parse_case

__all__ = [
    "DEFAULTS_FILE",
    "claim_id",
    "SCHEMA_VERSION",
    "CaseDefaults",
    "Control",
    "FactCase",
    "defaults_for",
    "is_case_file",
    "load_case",
    "parse_case",
    "read_yaml_mapping",
]
