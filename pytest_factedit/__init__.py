"""pytest-factedit: knowledge edits of language models as pytest tests.

Faces at the top (`plugin`, `items`, `session`, `cli`, `errors`); every other job under a noun:
`cases/`, `model/`, `metrics/`, `localize/`, `edit/`, `run/`, `report/` (docs/architecture.md).
Importing this package does not import torch, transformers, peft or rich; they load inside the run.
"""

from .cases import Control, FactCase, load_case
from .edit import register_editor
from .errors import CaseError, FactEditError
from .metrics import DEFAULT_THRESHOLDS, METRICS, matches
from .report.manifest import load_edit

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_THRESHOLDS",
    "METRICS",
    "CaseError",
    "Control",
    "FactCase",
    "FactEditError",
    "load_case",
    "load_edit",
    "matches",
    "register_editor",
]
