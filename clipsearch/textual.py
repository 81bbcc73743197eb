"""Text backends: one object per way of running the CLIP text tower, chosen once when the model loads.

Every backend takes open_clip token ids (n, context) and returns L2-normalised float32 (n, dim) vectors:

- `TorchTextBackend` (`torch-fp32`, `torch-bf16`, `torch-fp16`): the **EOT-truncated** path. CLIP's text
  transformer is causal and pools at the end-of-text token, so the positions after it never influence the output;
  the transformer runs only up to the longest end-of-text position of each batch (queries are grouped by length):
  the same vectors within 1e-5 as open_clip's `encode_text` on the padded 77-token context, for a fraction of the
  work on short queries. `torch-bf16` (`model.text_precision: bf16`) runs it on a bf16 copy of the transformer:
  a one-query forward pass is bound by reading weights, so about half the time on CPUs with AVX512-BF16/AMX,
  cosine to fp32 >= 0.999. The model itself stays fp32.
- `OnnxTextBackend` (`onnx-fp32`, `onnx-int8`): the same truncated computation in ONNX Runtime on CPU
  (`clipsearch.onnx_text`; exported once per weights sha and cached): fp32 matches torch within 1e-4, int8 has
  cosine >= 0.99. The token and positional embeddings (a cheap gather) stay in torch.
- `PaddedTextBackend` (`open_clip-padded`): open_clip's own `encode_text` over the full context. Serves text towers
  that are not classic CLIP (HF towers, CLS pooling, SigLIP tokenizers) and is the reference for parity tests.

`select_text_backend` applies `model.text_backend`: `auto` (the default) is ONNX Runtime fp32 on CPU (2.3x faster
than torch fp32 there, see docs/PERFORMANCE.md) and torch on CUDA; `auto` also picks torch when
`model.text_precision: bf16` asks for the bf16 torch tower, when the tower is not classic CLIP, or when the ONNX
export cannot be made (logged). `torch` and `onnx` force one engine; `onnx` on CUDA runs torch (logged).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer

from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.onnx_text import OnnxTextTower, load_onnx_text_tower
from clipsearch.settings import ModelSettings

log = logging.getLogger(__name__)


class TextBackend(Protocol):
    """Token ids in, L2-normalised float32 (n, dim) text embeddings out. Thread-safe after construction."""

    name: str

    def encode(self, tokens: torch.Tensor) -> np.ndarray: ...


@dataclass(frozen=True)
class TextTower:
    """The pieces of a classic CLIP text tower the truncated path needs."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: Any
    ln_final: torch.nn.Module
    text_projection: Any
    attn_mask: torch.Tensor
    output_dtype: torch.dtype  # what ln_final/text_projection expect: the model's own transformer dtype


def find_text_tower(model: Any, tokenizer: Any) -> TextTower | None:
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
    return TextTower(
        token_embedding=model.token_embedding,
        positional_embedding=model.positional_embedding,
        transformer=model.transformer,
        ln_final=model.ln_final,
        text_projection=model.text_projection,
        attn_mask=attn_mask,
        output_dtype=model.transformer.get_cast_dtype(),
    )


def bf16_text_tower(tower: TextTower, precision: str) -> TextTower:
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


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class _TruncatedBackend:
    """The shared EOT-truncated loop: group by end-of-text position, embed, run `_tower` on each length batch."""

    name = "truncated"

    def __init__(self, tower: TextTower, device: torch.device, batch_size: int, dim: int) -> None:
        self.tower = tower
        self.device = device
        self.batch_size = batch_size
        self.dim = dim

    def encode(self, tokens: torch.Tensor) -> np.ndarray:
        out = np.empty((tokens.shape[0], self.dim), dtype=np.float32)
        if tokens.shape[0] == 0:
            return out
        tower = self.tower
        eot = tokens.argmax(dim=-1)  # the pooling position open_clip uses (the EOT id is the largest id)
        order = torch.argsort(eot, stable=True)  # similar lengths share a batch: less padding
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                length = int(eot[idx].max()) + 1
                batch = tokens[idx, :length].to(self.device)
                cast_dtype = tower.transformer.get_cast_dtype()
                x = tower.token_embedding(batch).to(cast_dtype)
                x = x + tower.positional_embedding[:length].to(cast_dtype)
                out[idx.numpy()] = self._tower(x, eot[idx], length)
        return out

    def _tower(self, x: torch.Tensor, eot: torch.Tensor, length: int) -> np.ndarray:
        raise NotImplementedError


class TorchTextBackend(_TruncatedBackend):
    """The EOT-truncated text tower in PyTorch (fp32, fp16 with the model, or a bf16 copy)."""

    def __init__(self, tower: TextTower, device: torch.device, batch_size: int, dim: int) -> None:
        super().__init__(tower, device, batch_size, dim)
        dtype = tower.transformer.get_cast_dtype()
        self.name = "torch-" + {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

    def _tower(self, x: torch.Tensor, eot: torch.Tensor, length: int) -> np.ndarray:
        tower = self.tower
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x.to(tower.output_dtype))  # a no-op unless the tower runs in bf16
        x = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
        x = (
            tower.text_projection(x)
            if isinstance(tower.text_projection, torch.nn.Linear)
            else x @ tower.text_projection
        )
        return F.normalize(x.float(), dim=-1).cpu().numpy()


class OnnxTextBackend(_TruncatedBackend):
    """The EOT-truncated text tower in ONNX Runtime (CPU); the embedding gather stays in torch."""

    def __init__(self, tower: TextTower, session: OnnxTextTower, batch_size: int, dim: int, quantize: str) -> None:
        super().__init__(tower, torch.device("cpu"), batch_size, dim)
        self.session = session
        self.name = f"onnx-{'int8' if quantize == 'int8' else 'fp32'}"

    @property
    def path(self) -> Any:
        """The cached ONNX graph this backend runs."""
        return self.session.path

    def _tower(self, x: torch.Tensor, eot: torch.Tensor, length: int) -> np.ndarray:
        return _normalised(self.session(x.numpy(), eot.numpy()))


class PaddedTextBackend:
    """open_clip's own `encode_text` over the full padded context (any text tower; the parity reference)."""

    name = "open_clip-padded"

    def __init__(self, model: Any, device: torch.device, batch_size: int, dim: int) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.dim = dim

    def encode(self, tokens: torch.Tensor) -> np.ndarray:
        out = np.empty((tokens.shape[0], self.dim), dtype=np.float32)
        bs = self.batch_size
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], bs):
                features = self.model.encode_text(tokens[start : start + bs].to(self.device))
                out[start : start + bs] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return out


def wants_onnx(settings: ModelSettings, device: torch.device) -> bool:
    """Whether `model.text_backend` asks for ONNX Runtime on this device (see the module docstring)."""
    if device.type != "cpu":
        if settings.text_backend == "onnx":
            log.info("model.text_backend onnx ignored on %s: the text tower runs in PyTorch there", device)
        return False
    if settings.text_backend == "auto":
        return settings.text_precision != "bf16"
    return settings.text_backend == "onnx"


def select_text_backend(
    settings: ModelSettings,
    model: Any,
    tokenizer: Any,
    *,
    weights_sha256: str,
    device: torch.device,
    precision: str,
    dim: int,
) -> TextBackend:
    """The one text backend this encoder uses, per `model.text_backend` / `text_precision` and the device."""
    tower = find_text_tower(model, tokenizer)
    padded = PaddedTextBackend(model, device, settings.batch_size, dim)
    onnx = wants_onnx(settings, device)
    if tower is None:
        if onnx and settings.text_backend == "onnx":
            raise ConfigError(
                f"model.text_backend 'onnx' supports classic CLIP text towers (causal mask, end-of-text pooling); "
                f"{settings.arch} has another kind. Set model.text_backend: torch."
            )
        return padded
    if onnx:
        if settings.text_precision == "bf16":
            log.info("model.text_precision bf16 ignored: model.text_backend onnx runs the text tower")
        try:
            session = load_onnx_text_tower(
                tower.transformer,
                tower.ln_final,
                tower.text_projection,
                tower.attn_mask,
                arch=settings.arch,
                weights_sha256=weights_sha256,
                quantize=settings.onnx_quantize,
                cache_dir=settings.onnx_cache_dir,
                threads=torch.get_num_threads(),
            )
        except (ConfigError, ModelLoadError) as exc:
            if settings.text_backend == "onnx":
                raise
            log.warning("model.text_backend auto: ONNX Runtime unavailable (%s); the text tower runs in PyTorch", exc)
        else:
            return OnnxTextBackend(tower, session, settings.batch_size, dim, settings.onnx_quantize)
    if settings.text_precision == "bf16":
        tower = bf16_text_tower(tower, precision)
    return TorchTextBackend(tower, device, settings.batch_size, dim)
