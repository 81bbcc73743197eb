"""`ClipEncoder`: one open_clip model behind a small, thread-safe API (text and image embeddings).

Why a class and not a bare `open_clip.create_model` call (immich's model classes are the pattern):

- **Identity.** Vectors from two models are not comparable, so every encoder knows its `ModelIdentity`
  (architecture, pretrained tag or checkpoint file name, sha256 of the weights actually loaded; see
  `clipsearch.weights`, which also resolves tags and paths offline-first).
- **Lazy, locked load.** Building the encoder is free; the weights load on first use (or `load()`), once, even when
  several threads ask at the same time (the service warms up in the background while requests arrive).
- **Backends chosen once.** Loading picks the image backend (`clipsearch.visual`); the first text use picks one
  text backend (`clipsearch.textual`: torch fp32/bf16 on the EOT-truncated path, ONNX Runtime, or open_clip's
  padded path; `model.text_backend: auto` is ONNX Runtime fp32 on CPU and torch on CUDA), so an images-only run
  never exports an ONNX graph. Encoding is then a plain call on that object: no per-query branching on settings.
  The identity does not depend on the backend: the same weights, another engine.
- **Tokenising here.** Every text backend takes open_clip's token ids, so truncation flags are computed once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm as OpenClipLayerNorm
from open_clip.transformer import LayerNormFp32
from PIL import Image

from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.identity import ModelIdentity
from clipsearch.settings import ModelSettings
from clipsearch.textual import PaddedTextBackend, TextBackend, find_text_tower, select_text_backend
from clipsearch.visual import ImageBackend, ImageTransform, TorchImageBackend, encode_images
from clipsearch.weights import RANDOM_SEED, register_model_configs, resolve_weights, weights_sha256

log = logging.getLogger(__name__)

register_model_configs()  # importing the encoder is enough to use `clipsearch-tiny` (already done by weights)


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


class ClipEncoder:
    """An open_clip model loaded once, on first use, with its identity and its backends. Thread-safe.

    `ClipEncoder(settings)` or `ClipEncoder.from_settings(settings)` with a `ModelSettings`; nothing is loaded
    until `load()`, `identity`, `preprocess`, `warmup()` or an `encode_*` call.
    """

    def __init__(self, settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        cfg = open_clip.get_model_config(self.settings.arch)
        self._lock = threading.Lock()
        self._text_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._identity: ModelIdentity | None = None
        self._text: TextBackend | None = None
        self._padded: PaddedTextBackend | None = None
        self._image: ImageBackend | None = None
        self._query_image: ImageBackend | None = None  # query images: ONNX Runtime on CPU (model.query_image_backend)
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
        tokenizer = open_clip.get_tokenizer(s.arch)
        dim = int(model.text_projection.shape[1]) if find_text_tower(model, tokenizer) else self._probe_dim(model)
        self._padded = PaddedTextBackend(model, device, s.batch_size, dim)
        self._image = TorchImageBackend(model, device, precision, s.batch_size, dim)
        self._tokenizer = tokenizer
        self._dim = dim
        self._context_length = int(getattr(model, "context_length", self._context_length or 77))
        self._identity = ModelIdentity(
            arch=s.arch, pretrained=resolved.pretrained_label, weights_sha256=digest, dim=dim
        )
        self._device, self._precision = device, precision
        self._model = model  # last: readers that see a model see everything else too
        log.info(
            "loaded %s on %s (%s; images %s) in %.1f s",
            self._identity.describe(),
            device,
            precision,
            self._image.name,
            time.perf_counter() - started,
        )

    @staticmethod
    def _probe_dim(model: Any) -> int:
        with torch.inference_mode():
            tokens = torch.zeros((1, 8), dtype=torch.long, device=next(model.parameters()).device)
            return int(model.encode_text(tokens).shape[-1])

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
    def text_backend(self) -> TextBackend:
        """The text backend (`.name`: torch-fp32, torch-bf16, onnx-fp32, ...), chosen on the first text use.

        Lazy on purpose: the embed stage only encodes images and never pays for an ONNX export; the service's
        `warmup()` encodes a text, so a replica is ready with its text backend in place.
        """
        model = self.model
        if self._text is None:
            with self._text_lock:
                if self._text is None:
                    started = time.perf_counter()
                    self._text = select_text_backend(
                        self.settings,
                        model,
                        self._tokenizer,
                        weights_sha256=self.identity.weights_sha256,
                        device=self._device,
                        precision=self._precision,
                        dim=self.dim,
                    )
                    log.info("text backend %s ready in %.1f s", self._text.name, time.perf_counter() - started)
        return self._text

    @property
    def image_backend(self) -> ImageBackend:
        """The image backend chosen at load time."""
        self.load()
        assert self._image is not None
        return self._image

    @property
    def query_image_backend(self) -> ImageBackend:
        """The backend for query images (`model.query_image_backend`), chosen on first use (the service's warm-up):
        ONNX Runtime on CPU under `auto`, else the torch image backend."""
        torch_backend = self.image_backend
        if self._query_image is None:
            with self._text_lock:
                if self._query_image is None:
                    self._query_image = self._select_query_image_backend(torch_backend)
        return self._query_image

    def _select_query_image_backend(self, torch_backend: ImageBackend) -> ImageBackend:
        choice = self.settings.query_image_backend
        if choice == "torch" or self._device.type != "cpu":
            return torch_backend
        from clipsearch.onnx_visual import load_onnx_image_backend

        started = time.perf_counter()
        try:
            backend = load_onnx_image_backend(
                self.model,
                torch_backend.preprocess,
                torch_backend.input_shape,
                arch=self.settings.arch,
                weights_sha256=self.identity.weights_sha256,
                cache_dir=self.settings.onnx_cache_dir,
                threads=torch.get_num_threads(),
                quantize=self.settings.query_image_quantize,
            )
        except (ConfigError, ModelLoadError) as exc:
            if choice == "onnx":
                raise
            log.warning(
                "model.query_image_backend auto: ONNX Runtime unavailable (%s); query images run in PyTorch", exc
            )
            return torch_backend
        log.info("query image backend %s ready in %.1f s", backend.name, time.perf_counter() - started)
        return backend

    @property
    def preprocess(self) -> ImageTransform:
        """open_clip's inference transform (resize, centre crop, normalise). Picklable: fine in DataLoader workers."""
        return self.image_backend.preprocess

    @property
    def model(self) -> Any:
        """The underlying open_clip module (eval mode, no grad)."""
        return self.load()._model

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
        """L2-normalised float32 (n, dim) text embeddings from the chosen text backend."""
        return self.encode_text_with_flags(texts)[0]

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """`encode_text` plus the `truncated` flags of `tokenize`, from one tokenization."""
        tokens, truncated = self.tokenize(texts)
        return self.text_backend.encode(tokens), truncated

    def encode_text_padded(self, texts: Sequence[str]) -> np.ndarray:
        """open_clip's own `encode_text` over the full padded context: the reference for parity and benchmarks."""
        tokens, _ = self.tokenize(texts)
        assert self._padded is not None
        return self._padded.encode(tokens)

    # ----------------------------------------------------------------------------------------- images
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 (n, dim) embeddings of PIL images (preprocessed here, batched)."""
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        return encode_images(self.image_backend, images, self.settings.batch_size, self.dim)

    def encode_query_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`encode_images` on the query image backend (ONNX Runtime on CPU by default): the query path."""
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        return encode_images(self.query_image_backend, images, self.settings.batch_size, self.dim)

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 embeddings of an already preprocessed (n, 3, H, W) batch.

        A pinned CPU batch is copied to the GPU asynchronously; batches larger than `batch_size` are split.
        """
        return self.image_backend.encode_tensors(batch)

    def warmup(self) -> None:
        """Load, then run one text and one image through the backends (first-call kernels and allocations)."""
        self.encode_text(["warm up"])
        self.encode_image_tensors(torch.zeros((1, *self.image_backend.input_shape)))
        self.encode_query_images([Image.new("RGB", (64, 64))])  # the query image backend (an ONNX export once)
