"""ONNX Runtime execution backend for the CLIP text tower (`model.text_backend: onnx`), optionally int8.

Why: one short query on a small CPU is bound by per-op overhead and by reading ~150 MB of fp32 weights.
ONNX Runtime fuses the transformer (attention, GELU, LayerNorm) into a few kernels, and its dynamic int8
quantisation reads a quarter of the bytes, which brings a query well under torch's fp32/bf16 time on 2 cores.

What runs where:

- torch (in `ClipEncoder`): tokenisation, the token-embedding lookup and the positional embedding, i.e. the
  cheap gather. Keeping them out of the graph keeps the 100 MB embedding table from being duplicated.
- ONNX Runtime: the causal transformer, `ln_final`, EOT pooling and the text projection. The sequence length is
  a dynamic axis and the causal mask is sliced to it inside the graph, so the EOT truncation still applies.

The graph is exported once with torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, which needs
`onnxscript`; the legacy TorchScript exporter bakes MultiheadAttention's reshape sizes into the graph and fails
at any other sequence length) and cached under `<cache>/clipsearch-<arch>-<weights sha>-<quantize>-...onnx`.
The key carries the weights' sha256, the quantisation, the torch/onnx/onnxruntime versions and a graph version,
so a new checkpoint or library version re-exports and nothing stale is ever loaded. Files are written to a
temporary name and renamed into place, so a crash or a concurrent process never leaves a half-written model.
The model's identity does not change: the same weights run on another engine.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.fileio import atomic_path

log = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the exported graph's inputs, outputs or contents change
INPUT_EMBEDDINGS = "embeddings"  # (batch, length, width) float32: token + positional embeddings
INPUT_EOT = "eot"  # (batch,) int64: the end-of-text position of each row
OUTPUT_FEATURES = "features"  # (batch, embed_dim) float32, not normalised
QUANTIZE_CHOICES = ("none", "int8")
CACHE_ENV = "CLIPSEARCH_MODEL__ONNX_CACHE_DIR"  # the env form of model.onnx_cache_dir: one name for both


def _require(module: str) -> Any:
    """Import an optional dependency of the onnx backend, or raise a ConfigError that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"model.text_backend is 'onnx' but {module} is not importable ({exc}). Reinstall the project's dependencies with "
            "`pip install -c constraints.txt -e .` (onnx, onnxruntime and onnxscript are dependencies), or set model.text_backend: torch."
        ) from exc


def default_cache_dir() -> Path:
    """`$CLIPSEARCH_MODEL__ONNX_CACHE_DIR` (model.onnx_cache_dir), else `$XDG_CACHE_HOME/clipsearch/onnx`, else `~/.cache/clipsearch/onnx`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "clipsearch" / "onnx"


def cache_path(cache_dir: Path, arch: str, weights_sha256: str, quantize: str) -> Path:
    """Where the exported graph for these weights, this quantisation and these library versions lives."""
    ort = _require("onnxruntime")
    onnx = _require("onnx")
    torch_version = torch.__version__.split("+")[0]
    safe_arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in arch)
    name = (
        f"clipsearch-{safe_arch}-{weights_sha256[:20]}-{quantize}-g{GRAPH_VERSION}"
        f"-torch{torch_version}-onnx{onnx.__version__}-ort{ort.__version__}.onnx"
    )
    return cache_dir / name


class _TextGraph(torch.nn.Module):
    """The exported part of the tower: transformer with a sliced causal mask, ln_final, EOT pooling, projection."""

    def __init__(self, transformer: Any, ln_final: torch.nn.Module, text_projection: Any, attn_mask: torch.Tensor):
        super().__init__()
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask.detach().clone(), persistent=False)

    def forward(self, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        length = embeddings.shape[1]
        mask: torch.Tensor = self.attn_mask  # type: ignore[assignment]  # a registered buffer
        x = self.transformer(embeddings, attn_mask=mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), eot]
        if isinstance(self.text_projection, torch.nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for the block: the exporter's optimiser logs every pass at INFO."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_text_graph(
    transformer: Any,
    ln_final: torch.nn.Module,
    text_projection: Any,
    attn_mask: torch.Tensor,
    path: Path,
) -> None:
    """Export the fp32 text graph with dynamic batch and sequence length to `path` (one self-contained file)."""
    _require("onnxscript")  # the dynamo exporter's backend
    graph = _TextGraph(transformer, ln_final, text_projection, attn_mask).eval()
    context = int(attn_mask.shape[0])
    width = int(getattr(transformer, "width", 0) or next(transformer.parameters()).shape[-1])
    example = (torch.zeros((2, min(8, context), width)), torch.tensor([1, min(8, context) - 1]))
    batch = torch.export.Dim("batch", min=1, max=65536)
    length = torch.export.Dim("length", min=2, max=context)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter's deprecation/trace chatter; failures still raise
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_EMBEDDINGS, INPUT_EOT],
            output_names=[OUTPUT_FEATURES],
            dynamic_shapes=({0: batch, 1: length}, {0: batch}),
            verbose=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the graph's MatMuls (signed int8 weights: the fastest here, see benchmarks)."""
    quantization = _require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(source), str(target), weight_type=quantization.QuantType.QInt8)


class OnnxTextTower:
    """An ONNX Runtime session for the text graph; `__call__` is thread-safe (ORT sessions are)."""

    def __init__(self, path: Path, threads: int) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn the shared cores between queries and measured slower on 2 busy cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, embeddings: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """Unnormalised (batch, embed_dim) float32 features of (batch, length, width) embeddings pooled at `eot`."""
        feed = {
            INPUT_EMBEDDINGS: np.ascontiguousarray(embeddings, dtype=np.float32),
            INPUT_EOT: np.ascontiguousarray(eot, dtype=np.int64),
        }
        return np.asarray(self.session.run([OUTPUT_FEATURES], feed)[0], dtype=np.float32)


def load_onnx_text_tower(
    transformer: Any,
    ln_final: torch.nn.Module,
    text_projection: Any,
    attn_mask: torch.Tensor,
    *,
    arch: str,
    weights_sha256: str,
    quantize: str,
    cache_dir: Path | None,
    threads: int,
) -> OnnxTextTower:
    """The cached graph for these weights (exported, and quantised, on the first load only) in an ORT session."""
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"model.onnx_quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}.")
    _require("onnxruntime")
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_path(directory, arch, weights_sha256, quantize)
    if path.is_file():
        try:
            tower = OnnxTextTower(path, threads)
            log.info("onnx text tower: reusing %s", path)
            return tower
        except Exception as exc:  # a damaged cache entry (disk full, manual copy): re-export below
            log.warning("onnx text tower: cached %s does not load (%s); exporting it again", path, exc)
    log.info(
        "onnx text tower: exporting %s (%s) to %s; only the first load with these weights pays this",
        arch,
        quantize,
        path,
    )
    started = time.perf_counter()
    try:
        with atomic_path(path, durable=False, unique=True, suffix=".tmp.onnx") as tmp:
            if quantize == "int8":
                fp32 = tmp.with_name(tmp.name + ".fp32.onnx")  # the quantiser's input, never a cache entry
                try:
                    export_text_graph(transformer, ln_final, text_projection, attn_mask, fp32)
                    quantize_int8(fp32, tmp)
                finally:
                    fp32.unlink(missing_ok=True)
            else:
                export_text_graph(transformer, ln_final, text_projection, attn_mask, tmp)
    except ConfigError:
        raise
    except OSError as exc:
        raise ModelLoadError(
            f"could not write the onnx text tower to {directory} ({exc}). Point model.onnx_cache_dir (or "
            f"{CACHE_ENV}) at a writable directory, or set model.text_backend: torch."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"exporting the {arch} text tower to ONNX failed ({type(exc).__name__}: {exc}). "
            "Set model.text_backend: torch to run the text tower in PyTorch."
        ) from exc
    log.info("onnx text tower: exported %s (%s) in %.1f s", path, quantize, time.perf_counter() - started)
    return OnnxTextTower(path, threads)
