"""Where a model's weights come from: open_clip tags, local checkpoint files, or fixed-seed random weights.

- **Offline-first.** A pretrained tag is served from the local cache when it is there; otherwise the download
  host is probed with a short timeout first, so a machine without network fails in seconds with a
  `ModelLoadError` that says how to point `pretrained` at a local file, instead of 45 s of hub retries.
- **Identity.** `weights_sha256` is taken over the fp32 CPU state_dict in sorted key order, so a GPU fp16 encoder
  and a CPU fp32 encoder of the same weights share one identity, in every process.

The test-only architecture `clipsearch-tiny` (`model_configs/clipsearch-tiny.json`) is registered with open_clip
when this module is imported, so `arch="clipsearch-tiny", pretrained="random"` works in any process.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import open_clip
import torch

from clipsearch.errors import ModelLoadError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM_PRETRAINED = "random"
RANDOM_SEED = 0  # every process that asks for random weights gets exactly these weights
CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
NETWORK_PROBE_TIMEOUT_S = 5.0
PRETRAINED_ENV = "CLIPSEARCH_MODEL__PRETRAINED"
ARCH_ENV = "CLIPSEARCH_MODEL__ARCH"


def register_model_configs() -> None:
    """Make the architectures in `clipsearch/model_configs/` (e.g. `clipsearch-tiny`) known to open_clip.

    Idempotent: open_clip appends the directory to its search path on every call, so only add it once.
    """
    if "clipsearch-tiny" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


register_model_configs()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state_dict: sorted keys, each key's name, shape and fp32 CPU bytes.

    Deterministic across processes and devices, and independent of the precision the model later runs in.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(repr(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(CHECKPOINT_SUFFIXES) or Path(value).exists()


def _network_reachable(url: str, timeout_s: float = NETWORK_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can we open a TCP connection to `url`'s host within `timeout_s`? (DNS included, hence the thread.)"""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append("")
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=probe, name="clipsearch-network-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        return False, f"no answer from {host}:{port} within {timeout_s:.0f} s"
    return outcome[0] == "", outcome[0] or "ok"


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """The repo id and the file names open_clip would try for a `hf_hub` pretrained entry (safetensors first)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
    if filename != HF_WEIGHTS_NAME and filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return repo_id, names


def _cached_checkpoint(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The local file for a pretrained entry when it is already cached; no network access."""
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import hf_hub_download

        repo_id, names = _hf_candidates(hf_hub)
        for name in names:
            try:
                return str(hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True))
            except Exception:  # noqa: S112 - not cached under this name; try the next candidate
                continue
        return None
    url = cfg.get("url", "")
    if url:
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / Path(urlsplit(url).path).name
        return str(target) if target.is_file() else None
    return None


def _download_source(cfg: dict[str, Any]) -> str:
    """The URL open_clip would fetch from (the HF endpoint honours HF_ENDPOINT mirrors)."""
    if cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants as hf_constants

        return f"{hf_constants.ENDPOINT.rstrip('/')}/{cfg['hf_hub']}"
    return str(cfg.get("url", ""))


def _offline_help(arch: str) -> str:
    quick_gelu_arch = f"{arch}-quickgelu"
    hint = (
        f"To run without network, copy the checkpoint to this machine and point `pretrained` at the file: "
        f"{PRETRAINED_ENV}=/path/to/open_clip_pytorch_model.bin (or `model.pretrained: /path/to/...` in params.yaml)."
    )
    if quick_gelu_arch in open_clip.list_models():
        hint += (
            f" Checkpoints trained with QuickGELU (OpenAI's, LAION-400M's) need the matching architecture: "
            f"{ARCH_ENV}={quick_gelu_arch}."
        )
    return hint


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights come from: a checkpoint file (or none, for random init) and how to build around it."""

    checkpoint: str | None
    pretrained_label: str  # what ModelIdentity.pretrained records
    quick_gelu: bool
    preprocess_overrides: dict[str, Any]


def resolve_weights(arch: str, pretrained: str, cache_dir: str | None) -> ResolvedWeights:
    """Turn `pretrained` (tag, local path or 'random') into a local checkpoint file, or raise ModelLoadError."""
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise ModelLoadError(
            f"unknown open_clip architecture {arch!r}"
            + (f"; did you mean one of {', '.join(close)}?" if close else ".")
            + " Set model.arch in params.yaml or CLIPSEARCH_MODEL__ARCH."
        )
    if pretrained == RANDOM_PRETRAINED:
        return ResolvedWeights(None, RANDOM_PRETRAINED, False, {})

    if open_clip.is_pretrained_cfg(arch, pretrained):
        cfg = dict(open_clip.get_pretrained_cfg(arch, pretrained))
        overrides = open_clip.transform.merge_preprocess_dict({}, cfg)
        quick_gelu = bool(cfg.get("quick_gelu", False))
        cached = _cached_checkpoint(cfg, cache_dir)
        if cached:
            return ResolvedWeights(cached, pretrained, quick_gelu, overrides)
        source = _download_source(cfg)
        reachable, reason = _network_reachable(source)
        if not reachable:
            raise ModelLoadError(
                f"the weights for {arch}/{pretrained} could not be downloaded: {source} is unreachable ({reason}) "
                f"and they are not in the local cache. {_offline_help(arch)}"
            )
        try:
            path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
        except Exception as exc:
            raise ModelLoadError(
                f"the weights for {arch}/{pretrained} could not be downloaded from {source} "
                f"({type(exc).__name__}: {exc}). {_offline_help(arch)}"
            ) from exc
        if not path:
            raise ModelLoadError(f"open_clip has no download location for {arch}/{pretrained}. {_offline_help(arch)}")
        return ResolvedWeights(str(path), pretrained, quick_gelu, overrides)

    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"the checkpoint file {path} for {arch} does not exist (model.pretrained / {PRETRAINED_ENV}). "
                "Mount or copy the open_clip checkpoint there, or set `pretrained` to an open_clip tag."
            )
        return ResolvedWeights(str(path), path.name, False, {})

    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise ModelLoadError(
        f"{pretrained!r} is neither an open_clip pretrained tag for {arch} nor an existing checkpoint file. "
        f"Valid tags for {arch}: {', '.join(tags) if tags else '(none: use a local checkpoint path)'}; "
        f"or a path such as {PRETRAINED_ENV}=/path/to/open_clip_pytorch_model.bin; or 'random' (tests only)."
    )
