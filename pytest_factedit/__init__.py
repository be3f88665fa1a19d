"""pytest-factedit: knowledge edits of language models as pytest tests.

Importing this package does not import torch or transformers; they load inside the run.
"""

from .cases import CaseError, Control, FactCase, load_case
from .metrics import matches
from .metricspec import DEFAULT_THRESHOLDS, METRICS

__version__ = "0.1.0"
__all__ = ["CaseError", "Control", "DEFAULT_THRESHOLDS", "FactCase", "METRICS", "load_case", "matches"]
