"""Circuit localization: causal tracing and attribution patching over a model's layers (torch loads lazily)."""

from ..errors import SubjectNotFound
from .hooks import SITES, forward_hooks, site_module_name
from .localizer import FactPrompts, Localization, LocalizeSettings, PromptGrid, localize, top_layers
from .stored import stored_localization, trace_key

__all__ = [
    "SITES",
    "FactPrompts",
    "Localization",
    "LocalizeSettings",
    "PromptGrid",
    "SubjectNotFound",
    "forward_hooks",
    "localize",
    "site_module_name",
    "stored_localization",
    "top_layers",
    "trace_key",
]
