"""Image backends: how an encoder turns pictures into vectors (today PyTorch; an ONNX vision tower fits here).

An `ImageBackend` owns the inference transform (resize, centre crop, normalise) and the vision tower:
`preprocess` makes one (3, H, W) tensor from a PIL image (picklable, so it runs in DataLoader workers) and
`encode_tensors` embeds a preprocessed batch into L2-normalised float32 (n, dim) vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

ImageTransform = Callable[[Image.Image], torch.Tensor]


class ImageBackend(Protocol):
    """Preprocessed (n, 3, H, W) batches in, L2-normalised float32 (n, dim) image embeddings out."""

    name: str
    preprocess: ImageTransform
    input_shape: tuple[int, int, int]

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray: ...


class TorchImageBackend:
    """open_clip's vision tower in PyTorch, in the model's precision, batched by `batch_size`."""

    def __init__(self, model: Any, device: torch.device, precision: str, batch_size: int, dim: int) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.dim = dim
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.name = f"torch-{precision}"
        cfg = open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg)
        self.preprocess = cast(ImageTransform, open_clip.transform.image_transform_v2(cfg, is_train=False))
        size = model.visual.preprocess_cfg["size"]
        height, width = (size, size) if isinstance(size, int) else size
        self.input_shape = (3, int(height), int(width))

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """A pinned CPU batch is copied to the GPU asynchronously; batches larger than `batch_size` are split."""
        out = np.empty((batch.shape[0], self.dim), dtype=np.float32)
        if batch.shape[0] == 0:
            return out
        bs = self.batch_size
        with torch.inference_mode():
            for start in range(0, batch.shape[0], bs):
                part = batch[start : start + bs].to(self.device, dtype=self.dtype, non_blocking=batch.is_pinned())
                features = self.model.encode_image(part)
                out[start : start + bs] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return out


def encode_images(backend: ImageBackend, images: Sequence[Image.Image], batch_size: int, dim: int) -> np.ndarray:
    """PIL images through `backend` (preprocessed here, `batch_size` at a time)."""
    if not images:
        return np.empty((0, dim), dtype=np.float32)
    parts = [
        backend.encode_tensors(torch.stack([backend.preprocess(img) for img in images[start : start + batch_size]]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts, axis=0)
