"""A Hugging Face hub id's way in: the local cache first, then the network once and briefly.

Without this, a machine with no network sits through the hub client's retries ("Retrying in 8s", about a
minute) before the error. Here a model already in the cache loads with `local_files_only` (no network at
all), and one that is not costs one connection attempt of a few seconds before a message that says what
was tried and how to get the model.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ..errors import ModelLoadError
from .spec import ALIASES, DEFAULT_MODEL, ModelSpec

PROBE_SECONDS = 3.0
_TRUE = ("1", "true", "yes", "on")


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_locally(repo_id: str) -> bool:
    """Is the model's config in the local hub cache (so it loads with no network)?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the cache cannot hold (bad characters): not cached
        return False


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_address() -> tuple[str, int]:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connection to the hub, at most `timeout` seconds. Behind an HTTPS proxy the hub client's
    own connection decides (a direct one says nothing there), so this answers True."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def hub_error(spec: ModelSpec, tried: list[str], error: str = "") -> ModelLoadError:
    """What was tried for a hub id, why it failed, and the three ways to get the model."""
    if spec.name in ALIASES:
        tried = [f"the alias {spec.name!r} -> {spec.source!r}", *tried]
    return ModelLoadError(
        f"--model {spec.name}: could not load the model. Tried: "
        + "; ".join(tried)
        + (f". Error: {error}" if error else "")
        + f".\nFix: on a machine with network run `huggingface-cli download {spec.source}` (the files go to the "
        f"Hugging Face cache, {hub_cache()}; copy that folder here or set HF_HOME to it), or pass a local folder "
        f"with --model /path/to/model, or use the embedded default (--model {DEFAULT_MODEL})."
    )


def local_files_only(spec: ModelSpec) -> bool:
    """For a hub id: True when the cache has it (load without network); False when the hub answered (load
    may download); raises the hub error at once when neither holds."""
    if cached_locally(spec.source):
        return True
    tried = [f"a local folder named {spec.source!r} (none exists)", f"the local Hugging Face cache {hub_cache()}"]
    if offline():
        raise hub_error(spec, tried + ["not the hub: HF_HUB_OFFLINE is set"])
    host, port = hub_address()
    if not hub_reachable():
        raise hub_error(spec, tried + [f"the hub at {host}:{port}, which did not answer within {PROBE_SECONDS:g} s"])
    return False
