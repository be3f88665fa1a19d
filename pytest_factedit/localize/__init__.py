"""Circuit localization: causal tracing and attribution patching over a model's layers (torch loads lazily)."""

from ..errors import SubjectNotFound
from .hooks import SITES, forward_hooks, site_module_name
from .localizer import FactPrompts, Localization, LocalizeSettings, PromptGrid, localize, top_layers

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
    "top_layers",
]
