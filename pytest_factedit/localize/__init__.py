"""Circuit localization: causal tracing and attribution patching over a model's layers (torch loads lazily)."""

from .hooks import SITES, forward_hooks, site_module_name
from .localizer import METHODS, Localization, PromptGrid, localize, top_layers
from .patching import SubjectNotFound

__all__ = ["METHODS", "SITES", "Localization", "PromptGrid", "SubjectNotFound", "forward_hooks", "localize",
           "site_module_name", "top_layers"]
