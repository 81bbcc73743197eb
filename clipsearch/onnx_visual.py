"""ONNX Runtime execution of the CLIP vision tower for *query* images (`model.query_image_backend`).

Why: a query image (an upload, an image URL) is one 224 px tensor through ViT-B-32 on a small CPU shared with
other work. PyTorch's intra-op threads spin while they wait, and on 2 oversubscribed cores that turned a batch
of one into seconds in our benchmark; ONNX Runtime with spinning off, and its fused attention/GELU/LayerNorm
kernels, stays within the image-query budget (see README, Performance). The embed stage keeps PyTorch: it runs
large batches on a GPU where this does not apply, and never loads this graph.

Same rules as the text graph (`clipsearch.onnx_text`): exported once with torch's dynamo exporter with a dynamic
batch axis, cached under `<cache>/clipsearch-visual-<arch>-<weights sha>-...onnx` (written atomically; the key
carries the library versions and a graph version), never loaded stale. The model's identity does not change.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsearch.errors import ConfigError, ModelLoadError
from clipsearch.fileio import atomic_path
from clipsearch.onnx_text import _quiet_loggers, _require, cache_path, default_cache_dir, quantize_int8
from clipsearch.visual import ImageTransform

log = logging.getLogger(__name__)

GRAPH_VERSION = 1
INPUT_PIXELS = "pixels"  # (batch, 3, H, W) float32, preprocessed
OUTPUT_FEATURES = "features"  # (batch, embed_dim) float32, not normalised


def export_visual_graph(visual: torch.nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    """Export the fp32 vision tower with a dynamic batch axis to `path` (one self-contained file)."""
    _require("onnxscript")
    example = (torch.zeros((2, *input_shape)),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            visual.eval(),
            example,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_PIXELS],
            output_names=[OUTPUT_FEATURES],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )


class OnnxImageBackend:
    """An `ImageBackend` whose vision tower runs in ONNX Runtime (CPU); preprocessing is open_clip's, unchanged."""

    def __init__(self, path: Path, preprocess: ImageTransform, input_shape: tuple[int, int, int], threads: int):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.preprocess = preprocess
        self.input_shape = input_shape
        self.name = "onnx-int8" if "-int8-" in path.name else "onnx-fp32"

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        pixels = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if pixels.shape[0] == 0:
            return np.empty((0, 0), dtype=np.float32)
        features = np.asarray(self.session.run([OUTPUT_FEATURES], {INPUT_PIXELS: pixels})[0], dtype=np.float32)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def visual_cache_path(cache_dir: Path, arch: str, weights_sha256: str, quantize: str = "none") -> Path:
    text_path = cache_path(cache_dir, arch, weights_sha256, quantize)
    name = text_path.name.replace("clipsearch-", f"clipsearch-visual-v{GRAPH_VERSION}-", 1)
    return cache_dir / name


def load_onnx_image_backend(
    model: Any,
    preprocess: ImageTransform,
    input_shape: tuple[int, int, int],
    *,
    arch: str,
    weights_sha256: str,
    cache_dir: Path | None,
    threads: int,
    quantize: str = "none",
) -> OnnxImageBackend:
    """The cached vision graph for these weights (exported on the first load only) in an ORT session."""
    _require("onnxruntime")
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = visual_cache_path(directory, arch, weights_sha256, quantize)
    if path.is_file():
        try:
            backend = OnnxImageBackend(path, preprocess, input_shape, threads)
            log.info("onnx vision tower: reusing %s", path)
            return backend
        except Exception as exc:
            log.warning("onnx vision tower: cached %s does not load (%s); exporting it again", path, exc)
    log.info("onnx vision tower: exporting %s to %s; only the first load with these weights pays this", arch, path)
    started = time.perf_counter()
    try:
        with atomic_path(path, durable=False, unique=True, suffix=".tmp.onnx") as tmp:
            if quantize == "int8":
                fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
                try:
                    export_visual_graph(model.visual, input_shape, fp32)
                    quantize_int8(fp32, tmp)
                finally:
                    fp32.unlink(missing_ok=True)
            else:
                export_visual_graph(model.visual, input_shape, tmp)
    except ConfigError:
        raise
    except OSError as exc:
        raise ModelLoadError(
            f"could not write the onnx vision tower to {directory} ({exc}); set model.query_image_backend: torch"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"exporting the {arch} vision tower to ONNX failed ({type(exc).__name__}: {exc}); "
            "set model.query_image_backend: torch"
        ) from exc
    log.info("onnx vision tower: exported %s in %.1f s", path, time.perf_counter() - started)
    return OnnxImageBackend(path, preprocess, input_shape, threads)
