"""`ClipEncoder`: one open_clip model behind a small, thread-safe API (text and image embeddings).

Why a class and not a bare `open_clip.create_model` call:

- **Identity.** Vectors from two models are not comparable, so every encoder knows its `ModelIdentity`
  (architecture, pretrained tag or checkpoint file name, sha256 of the weights actually loaded). The checksum is
  taken over the fp32 CPU state_dict in sorted key order, so a GPU fp16 encoder and a CPU fp32 encoder of the same
  weights share one identity, in every process.
- **Lazy, locked load.** Building the encoder is free; the weights load on first use (or `load()`), once, even when
  several threads ask at the same time (the service warms up in the background while requests arrive).
- **Offline-first weight resolution.** A pretrained tag is served from the local cache when it is there; otherwise
  the download host is probed with a short timeout first, so a machine without network fails in seconds with a
  `ModelLoadError` that says how to point `pretrained` at a local file, instead of 45 s of hub retries.
- **EOT-truncated text path.** CLIP's text transformer is causal and pools at the end-of-text token, so the
  positions after it never influence the output. `encode_text` runs the transformer only up to the longest
  end-of-text position in each batch (queries are grouped by length): the same vectors within 1e-5 as open_clip's
  `encode_text` on the padded 77-token context, for a fraction of the work on short queries.
  `encode_text_padded` keeps open_clip's own path for parity tests and benchmarks.
- **Optional bf16 query tower.** A one-query forward pass is bound by reading the text tower's weights, not by
  arithmetic, so `model.text_precision: bf16` runs the EOT-truncated path on a bf16 copy of the text
  transformer: about half the time on CPUs with AVX512-BF16/AMX, cosine to fp32 >= 0.999. The model itself
  stays fp32, so image embeddings, `encode_text_padded` and the identity are unchanged. Off by default.
- **Optional ONNX Runtime query tower.** `model.text_backend: onnx` (optionally `model.onnx_quantize: int8`)
  runs the same EOT-truncated computation in ONNX Runtime on CPU (`clipsearch.onnx_text`): exported once per
  weights and cached; fp32 matches torch within 1e-5, int8 has cosine >= 0.99. Off by default.

The test-only architecture `clipsearch-tiny` (`model_configs/clipsearch-tiny.json`) is registered with open_clip
when this module is imported, so `arch="clipsearch-tiny", pretrained="random"` works in any process.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm as OpenClipLayerNorm
from open_clip.transformer import LayerNormFp32
from PIL import Image

from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.identity import ModelIdentity
from clipsearch.onnx_text import OnnxTextTower, load_onnx_text_tower
from clipsearch.settings import ModelSettings

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM_PRETRAINED = "random"
RANDOM_SEED = 0  # every process that asks for random weights gets exactly these weights
CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
NETWORK_PROBE_TIMEOUT_S = 5.0
PRETRAINED_ENV = "CLIPSEARCH_MODEL__PRETRAINED"
ARCH_ENV = "CLIPSEARCH_MODEL__ARCH"

ImageTransform = Callable[[Image.Image], torch.Tensor]


def register_model_configs() -> None:
    """Make the architectures in `clipsearch/model_configs/` (e.g. `clipsearch-tiny`) known to open_clip.

    Idempotent: open_clip appends the directory to its search path on every call, so only add it once.
    """
    if "clipsearch-tiny" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


register_model_configs()


# --------------------------------------------------------------------------------------------- weights
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
class _Resolved:
    """Where the weights come from: a checkpoint file (or none, for random init) and how to build around it."""

    checkpoint: str | None
    pretrained_label: str  # what ModelIdentity.pretrained records
    quick_gelu: bool
    preprocess_overrides: dict[str, Any]


def resolve_weights(arch: str, pretrained: str, cache_dir: str | None) -> _Resolved:
    """Turn `pretrained` (tag, local path or 'random') into a local checkpoint file, or raise ModelLoadError."""
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise ModelLoadError(
            f"unknown open_clip architecture {arch!r}"
            + (f"; did you mean one of {', '.join(close)}?" if close else ".")
            + " Set model.arch in params.yaml or CLIPSEARCH_MODEL__ARCH."
        )
    if pretrained == RANDOM_PRETRAINED:
        return _Resolved(None, RANDOM_PRETRAINED, False, {})

    if open_clip.is_pretrained_cfg(arch, pretrained):
        cfg = dict(open_clip.get_pretrained_cfg(arch, pretrained))
        overrides = open_clip.transform.merge_preprocess_dict({}, cfg)
        quick_gelu = bool(cfg.get("quick_gelu", False))
        cached = _cached_checkpoint(cfg, cache_dir)
        if cached:
            return _Resolved(cached, pretrained, quick_gelu, overrides)
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
        return _Resolved(str(path), pretrained, quick_gelu, overrides)

    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"the checkpoint file {path} for {arch} does not exist (model.pretrained / {PRETRAINED_ENV}). "
                "Mount or copy the open_clip checkpoint there, or set `pretrained` to an open_clip tag."
            )
        return _Resolved(str(path), path.name, False, {})

    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise ModelLoadError(
        f"{pretrained!r} is neither an open_clip pretrained tag for {arch} nor an existing checkpoint file. "
        f"Valid tags for {arch}: {', '.join(tags) if tags else '(none: use a local checkpoint path)'}; "
        f"or a path such as {PRETRAINED_ENV}=/path/to/open_clip_pytorch_model.bin; or 'random' (tests only)."
    )


# --------------------------------------------------------------------------------------------- devices
def _pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "model.device is 'cuda' but PyTorch sees no CUDA device; use device 'auto' or 'cpu', "
            "or run on a GPU node with the CUDA build of torch."
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _pick_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("model.precision 'fp16' needs a CUDA device; use 'auto' or 'fp32' on CPU.")
    return requested


def _cap_cpu_threads() -> None:
    """Never run more intra-op threads than CPUs this process may use (containers often pin fewer than exist).

    Only lowers the count; a smaller value chosen by the caller (torch.set_num_threads, OMP_NUM_THREADS) stands.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    if torch.get_num_threads() > available:
        torch.set_num_threads(available)


def _to_half_precision(model: torch.nn.Module) -> None:
    """What open_clip's `precision='fp16'` does, applied after the fp32 weights were hashed.

    Linear/conv/attention weights become fp16; LayerNorms run in fp32 (LayerNormFp32 has the same parameters
    as open_clip's LayerNorm, so only the forward changes).
    """
    for module in model.modules():
        if type(module) is OpenClipLayerNorm:
            module.__class__ = LayerNormFp32
    open_clip.convert_weights_to_lp(model, dtype=torch.float16)


# --------------------------------------------------------------------------------------------- encoder
@dataclass(frozen=True)
class _TextTower:
    """The pieces of a classic CLIP text tower the truncated path needs."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: Any
    ln_final: torch.nn.Module
    text_projection: Any
    attn_mask: torch.Tensor
    output_dtype: torch.dtype  # what ln_final/text_projection expect: the model's own transformer dtype


def _bf16_text_tower(tower: _TextTower, precision: str) -> _TextTower:
    """The same tower with a bf16 copy of its transformer (the model's own fp32 transformer is left alone).

    Only for an fp32 model: an fp16 model is already half precision. Warns when the CPU lacks native bf16
    (AVX512-BF16 or AMX), where bf16 matrix products are emulated and slower than fp32.
    """
    if precision != "fp32":
        log.info("model.text_precision bf16 ignored: the model already runs in %s", precision)
        return tower
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    if not native:
        log.warning(
            "model.text_precision is bf16 but this CPU has no native bf16 (AVX512-BF16/AMX): text encoding will be "
            "slower than fp32; set model.text_precision: fp32"
        )
    return dataclasses.replace(
        tower,
        transformer=copy.deepcopy(tower.transformer).to(torch.bfloat16),
        attn_mask=tower.attn_mask.to(torch.bfloat16),
    )


class ClipEncoder:
    """An open_clip model loaded once, on first use, with its identity. Thread-safe.

    `ClipEncoder(settings)` or `ClipEncoder.from_settings(settings)` with a `ModelSettings`; nothing is loaded
    until `load()`, `identity`, `preprocess`, `warmup()` or an `encode_*` call.
    """

    def __init__(self, settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        cfg = open_clip.get_model_config(self.settings.arch)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._preprocess: ImageTransform | None = None
        self._identity: ModelIdentity | None = None
        self._text_tower: _TextTower | None = None
        self._onnx_text: OnnxTextTower | None = None
        self._device = torch.device("cpu")
        self._precision = "fp32"
        self._dim = int(cfg["embed_dim"]) if cfg else None
        self._context_length = int(cfg["text_cfg"].get("context_length", 77)) if cfg else None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ClipEncoder:
        return cls(settings)

    # ----------------------------------------------------------------------------------------- loading
    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def load(self) -> ClipEncoder:
        """Load the weights now (idempotent; concurrent callers wait for the one load)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._load_locked()
        return self

    def _load_locked(self) -> None:
        s = self.settings
        started = time.perf_counter()
        device = _pick_device(s.device)
        precision = _pick_precision(s.precision, device)
        cache_dir = str(s.cache_dir) if s.cache_dir else None
        resolved = resolve_weights(s.arch, s.pretrained, cache_dir)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.create_model(
                    s.arch,
                    pretrained=resolved.checkpoint,
                    precision="fp32",
                    device="cpu",
                    force_quick_gelu=resolved.quick_gelu,
                    force_preprocess_cfg=resolved.preprocess_overrides or None,
                    cache_dir=cache_dir,
                )
        except Exception as exc:
            where = resolved.checkpoint or "random init"
            raise ModelLoadError(
                f"could not build {s.arch} from {where} ({type(exc).__name__}: {exc}). Is it an open_clip checkpoint "
                f"of the {s.arch} architecture, and complete? Re-copy it, or fix model.arch / model.pretrained."
            ) from exc
        model.eval().requires_grad_(False)
        digest = weights_sha256(model)
        if device.type == "cpu":
            _cap_cpu_threads()
        model.to(device)
        if precision == "fp16":
            _to_half_precision(model)
        preprocess_cfg = open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg)
        self._preprocess = cast(ImageTransform, open_clip.transform.image_transform_v2(preprocess_cfg, is_train=False))
        self._tokenizer = open_clip.get_tokenizer(s.arch)
        self._text_tower = self._find_text_tower(model, self._tokenizer)
        if s.text_backend == "onnx":
            self._onnx_text = self._load_onnx_text(self._text_tower, digest, device)
        if self._text_tower is not None and s.text_precision == "bf16" and self._onnx_text is None:
            self._text_tower = _bf16_text_tower(self._text_tower, precision)
        self._dim = int(model.text_projection.shape[1]) if self._text_tower else self._probe_dim(model)
        self._context_length = int(getattr(model, "context_length", self._context_length or 77))
        self._identity = ModelIdentity(
            arch=s.arch, pretrained=resolved.pretrained_label, weights_sha256=digest, dim=self._dim
        )
        self._device, self._precision = device, precision
        self._model = model  # last: readers that see a model see everything else too
        log.info(
            "loaded %s on %s (%s) in %.1f s",
            self._identity.describe(),
            device,
            precision,
            time.perf_counter() - started,
        )

    @staticmethod
    def _find_text_tower(model: Any, tokenizer: Any) -> _TextTower | None:
        """The classic CLIP text tower (causal mask, argmax/EOT pooling, SimpleTokenizer), or None.

        Anything else (HF text towers, CLS pooling, SigLIP tokenizers) uses open_clip's padded path.
        """
        attn_mask = getattr(model, "attn_mask", None)
        if (
            not isinstance(model, open_clip.CLIP)
            or getattr(model, "text_pool_type", None) != "argmax"
            or attn_mask is None
            or not isinstance(tokenizer, SimpleTokenizer)
            or tokenizer.reduction_fn is not None
        ):
            return None
        return _TextTower(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            attn_mask=attn_mask,
            output_dtype=model.transformer.get_cast_dtype(),
        )

    def _load_onnx_text(self, tower: _TextTower | None, digest: str, device: torch.device) -> OnnxTextTower | None:
        """The ONNX Runtime text graph for `model.text_backend: onnx` (None on CUDA, where torch is faster)."""
        s = self.settings
        if device.type != "cpu":
            log.info("model.text_backend onnx ignored on %s: the text tower runs in PyTorch there", device)
            return None
        if tower is None:
            raise ConfigError(
                f"model.text_backend 'onnx' supports classic CLIP text towers (causal mask, end-of-text pooling); "
                f"{s.arch} has another kind. Set model.text_backend: torch."
            )
        if s.text_precision == "bf16":
            log.info("model.text_precision bf16 ignored: model.text_backend onnx runs the text tower")
        return load_onnx_text_tower(
            tower.transformer,
            tower.ln_final,
            tower.text_projection,
            tower.attn_mask,
            arch=s.arch,
            weights_sha256=digest,
            quantize=s.onnx_quantize,
            cache_dir=s.onnx_cache_dir,
            threads=torch.get_num_threads(),
        )

    @staticmethod
    def _probe_dim(model: Any) -> int:
        with torch.inference_mode():
            tokens = torch.zeros((1, 8), dtype=torch.long, device=next(model.parameters()).device)
            return int(model.encode_text(tokens).shape[-1])

    def _loaded(self) -> Any:
        return self.load()._model

    # ----------------------------------------------------------------------------------------- properties
    @property
    def identity(self) -> ModelIdentity:
        """The identity of the loaded weights (loads them)."""
        self.load()
        assert self._identity is not None
        return self._identity

    @property
    def dim(self) -> int:
        """Embedding width; known from the architecture config without loading."""
        if self._dim is None:
            self.load()
        assert self._dim is not None
        return self._dim

    @property
    def context_length(self) -> int:
        """Text context in tokens (77 for CLIP); longer queries are truncated."""
        if self._context_length is None:
            self.load()
        assert self._context_length is not None
        return self._context_length

    @property
    def device(self) -> torch.device:
        self.load()
        return self._device

    @property
    def precision(self) -> str:
        self.load()
        return self._precision

    @property
    def preprocess(self) -> ImageTransform:
        """open_clip's inference transform (resize, centre crop, normalise). Picklable: fine in DataLoader workers."""
        self.load()
        assert self._preprocess is not None
        return self._preprocess

    @property
    def model(self) -> Any:
        """The underlying open_clip module (eval mode, no grad)."""
        return self._loaded()

    # ----------------------------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        """Token ids (n, context_length) exactly as open_clip's tokenizer makes them, and which texts were cut.

        A text is truncated when its BPE tokens plus start and end markers exceed the context; open_clip keeps
        the first `context_length - 1` tokens and ends with the end-of-text token.
        """
        self.load()
        tokenizer = self._tokenizer
        texts = [texts] if isinstance(texts, str) else list(texts)  # a bare str is one text, not its characters
        if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.reduction_fn is not None:
            tokens = tokenizer(texts)
            return tokens, [bool(row[-1] != 0) for row in tokens]
        ctx = self.context_length
        result = torch.zeros((len(texts), ctx), dtype=torch.long)
        truncated: list[bool] = []
        for i, text in enumerate(texts):
            ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
            truncated.append(len(ids) > ctx)
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = tokenizer.eot_token_id
            result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result, truncated

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 (n, dim) text embeddings, computed only up to each batch's end-of-text token."""
        return self.encode_text_with_flags(texts)[0]

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """`encode_text` plus the `truncated` flags of `tokenize`, from one tokenization."""
        tokens, truncated = self.tokenize(texts)
        return self._encode_tokens(tokens), truncated

    def _encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        self.load()
        out = np.empty((tokens.shape[0], self.dim), dtype=np.float32)
        if tokens.shape[0] == 0:
            return out
        tower = self._text_tower
        if tower is None:
            return self._encode_tokens_padded(tokens)
        eot = tokens.argmax(dim=-1)  # the pooling position open_clip uses (the EOT id is the largest id)
        order = torch.argsort(eot, stable=True)  # similar lengths share a batch: less padding
        bs = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                length = int(eot[idx].max()) + 1
                batch = tokens[idx, :length].to(self._device)
                cast_dtype = tower.transformer.get_cast_dtype()
                x = tower.token_embedding(batch).to(cast_dtype)
                x = x + tower.positional_embedding[:length].to(cast_dtype)
                if self._onnx_text is not None:
                    features = self._onnx_text(x.numpy(), eot[idx].numpy())
                    out[idx.numpy()] = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
                    continue
                x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
                x = tower.ln_final(x.to(tower.output_dtype))  # a no-op unless the tower runs in bf16
                x = x[torch.arange(x.shape[0], device=x.device), eot[idx].to(x.device)]
                x = (
                    tower.text_projection(x)
                    if isinstance(tower.text_projection, torch.nn.Linear)
                    else x @ tower.text_projection
                )
                out[idx.numpy()] = F.normalize(x.float(), dim=-1).cpu().numpy()
        return out

    def encode_text_padded(self, texts: Sequence[str]) -> np.ndarray:
        """open_clip's own `encode_text` over the full padded context: the reference for parity and benchmarks."""
        tokens, _ = self.tokenize(texts)
        return self._encode_tokens_padded(tokens)

    def _encode_tokens_padded(self, tokens: torch.Tensor) -> np.ndarray:
        model = self._loaded()
        out = np.empty((tokens.shape[0], self.dim), dtype=np.float32)
        bs = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], bs):
                features = model.encode_text(tokens[start : start + bs].to(self._device))
                out[start : start + bs] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return out

    # ----------------------------------------------------------------------------------------- images
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 (n, dim) embeddings of PIL images (preprocessed here, batched)."""
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        preprocess = self.preprocess
        bs = self.settings.batch_size
        parts = [
            self.encode_image_tensors(torch.stack([preprocess(img) for img in images[start : start + bs]]))
            for start in range(0, len(images), bs)
        ]
        return np.concatenate(parts, axis=0)

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 embeddings of an already preprocessed (n, 3, H, W) batch.

        A pinned CPU batch is copied to the GPU asynchronously; batches larger than `batch_size` are split.
        """
        model = self._loaded()
        if batch.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        dtype = torch.float16 if self._precision == "fp16" else torch.float32
        out = np.empty((batch.shape[0], self.dim), dtype=np.float32)
        bs = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, batch.shape[0], bs):
                part = batch[start : start + bs].to(self._device, dtype=dtype, non_blocking=batch.is_pinned())
                features = model.encode_image(part)
                out[start : start + bs] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return out

    def warmup(self) -> None:
        """Load, then run one text and one image through the model (first-call kernels and allocations)."""
        self.load()
        self.encode_text(["warm up"])
        size = self.model.visual.preprocess_cfg["size"]
        height, width = (size, size) if isinstance(size, int) else size
        self.encode_image_tensors(torch.zeros((1, 3, height, width)))
