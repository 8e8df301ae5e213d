"""Whether a Hugging Face hub id can be loaded here, asked before loading it.

Loading an uncached hub id without a network makes huggingface_hub retry for about half
a minute, printing a line per try, before it fails. `plan_load` answers in well under a
second instead: from the local cache (HF_HUB_OFFLINE set, or the hub unreachable), from
the hub, or not at all (the caller raises one line naming its option and the offline
alternatives).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
               "all_proxy")


def offline_env() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network at all."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_dir() -> Path:
    """The hub cache folder, read from the environment now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def in_cache(repo_id: str, filename: str) -> bool:
    """Whether `filename` of `repo_id` is in the local hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename,
                                                 cache_dir=str(cache_dir())), str)
    except Exception:  # an id the hub would refuse anyway: let the loader say why
        return False


def endpoint_host() -> tuple[str, int]:
    """Host and port of the hub (HF_ENDPOINT, default huggingface.co:443)."""
    u = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return u.hostname or "huggingface.co", u.port or (443 if u.scheme != "http" else 80)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub, `timeout` s at most. Behind a proxy this cannot be
    told without a request, so it answers True and leaves it to the loader."""
    if any(os.environ.get(k) for k in _PROXY_VARS):
        return True
    try:
        socket.create_connection(endpoint_host(), timeout=timeout).close()
    except OSError:
        return False
    return True


def plan_load(repo_id: str, filename: str) -> tuple[bool, str | None]:
    """How to load hub id `repo_id` whose `filename` (e.g. ``config.json``) marks a
    download: ``(local_files_only, why_not)``; `why_not` is None when it can be loaded,
    else why it cannot (for the caller's one-line error)."""
    cached = in_cache(repo_id, filename)
    if offline_env():
        return True, None if cached else ("not in the local Hugging Face cache and "
                                          "HF_HUB_OFFLINE is set")
    if hub_reachable():
        return False, None
    host = endpoint_host()[0]
    return True, None if cached else (f"not in the local Hugging Face cache and {host} "
                                      "cannot be reached")
