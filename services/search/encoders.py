"""Which encoder answers queries: the index artifact's own ONNX query encoder (no torch) on CPU, or the torch model.

On a CPU replica (`model.device: cpu`, or `auto` on a node without an NVIDIA device) with `model.text_backend`
auto or onnx, an artifact that carries its query encoder (`manifest.query_encoders`) is served by
`clipsearch.onnx_query.ArtifactTextEncoder`: torch is never imported, nothing is exported at start-up, and the
encoder's identity is the artifact's own. The settings' `model.arch` / `model.pretrained` must still name that
model (a replica configured for another model refuses the artifact, as it would with torch). Otherwise (a GPU,
`text_backend: torch`, `service.query_encoder: model`, or an artifact without encoders) the torch `ClipEncoder`
is loaded once, lazily, and every artifact is verified against its weights checksum as before.

Image query terms need CLIP's vision tower, which the artifact does not carry. On the torch-free path the text
encoder is wrapped (`WithVisionTower`): text queries never touch torch; the first image query loads the torch model
(its query-image backend: ONNX Runtime on CPU, `model.query_image_backend`) and checks that its identity is the
artifact's. Where torch is not installed (the torch-free image) or the model differs, image terms are refused with
422 and the reason (`clipsearch.compose.ImageQueryUnsupported`), before any image is fetched.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.compose import ImageQueryUnsupported
from clipsearch.errors import ArtifactError
from clipsearch.index.artifact import IndexArtifact, load_artifact, read_manifest
from clipsearch.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import ClipEncoder

log = logging.getLogger("services.search")

NVIDIA_DEVICE = Path("/dev/nvidiactl")


def runs_on_cpu(settings: Settings) -> bool:
    device = settings.model.device
    return device == "cpu" or (device == "auto" and not NVIDIA_DEVICE.exists())


class WithVisionTower:
    """The artifact's torch-free text encoder, plus image queries through the torch model loaded on first use."""

    def __init__(self, text: Any, load_torch: Callable[[], ClipEncoder]) -> None:
        self.text = text
        self.identity = text.identity
        self._load_torch = load_torch

    def __getattr__(self, name: str) -> Any:  # name, dim, warmup, ... of the text encoder
        return getattr(self.text, name)

    @property
    def can_encode_images(self) -> bool:
        """Whether the vision tower can be loaded here (torch and open_clip installed)."""
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "open_clip"))

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        vectors, flags = self.text.encode_text_with_flags(texts)
        return vectors, flags

    def encode_query_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not self.can_encode_images:
            raise ImageQueryUnsupported(
                "image terms: this replica serves text and photo-id queries only (torch-free: no vision tower); "
                "search by photo id, or ask a replica that loads the CLIP model"
            )
        model = self._load_torch()
        if model.identity != self.identity:
            raise ImageQueryUnsupported(
                f"image terms: the loaded model {model.identity.describe()} is not the index's "
                f"{self.identity.describe()}; image queries are not served by this replica"
            )
        return model.encode_query_images(images)


class QueryEncoders:
    """Hands each verified artifact the encoder that will serve its queries."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.artifact_first = (
            settings.service.query_encoder == "auto"
            and settings.model.text_backend in ("auto", "onnx")
            and runs_on_cpu(settings)
        )
        self._torch: ClipEncoder | None = None
        self._lock = threading.Lock()
        self.description = "not loaded yet"

    @property
    def torch_loaded(self) -> bool:
        return self._torch is not None

    def torch_encoder(self) -> ClipEncoder:
        """The torch model, loaded and warmed once (imports torch on first use)."""
        with self._lock:
            if self._torch is None:
                from clipsearch.encoder import ClipEncoder

                encoder = ClipEncoder.from_settings(self.settings.model)
                encoder.load()
                encoder.warmup()
                self._torch = encoder
            return self._torch

    def warm_start(self) -> None:
        """Load the torch model up front when it will be needed for sure (not in artifact-first mode)."""
        if not self.artifact_first:
            self.torch_encoder()
            self.description = "torch model"

    def _check_named_model(self, manifest_model: Any, index_dir: Path) -> None:
        wanted = self.settings.model
        names = {wanted.pretrained, Path(wanted.pretrained).name}
        if manifest_model.arch != wanted.arch or manifest_model.pretrained not in names:
            raise ArtifactError(
                f"the index at {index_dir} was built with {manifest_model.describe()} but this service is "
                f"configured for {wanted.arch}/{wanted.pretrained}; serve it with the matching model settings"
            )

    def load(self, index_dir: Path) -> tuple[Any, IndexArtifact]:
        """The verified artifact and the encoder for it (its own ONNX encoder when possible)."""
        if self.artifact_first:
            manifest = read_manifest(index_dir)
            if manifest.query_encoders:
                self._check_named_model(manifest.model, index_dir)
                from clipsearch.onnx_query import ArtifactTextEncoder

                artifact = load_artifact(index_dir, query_encoders=True)
                encoder = ArtifactTextEncoder(manifest.query_encoders, artifact.query_encoder_blobs)
                artifact.query_encoder_blobs.clear()  # the session and tables hold what they need
                encoder.warmup()
                self.description = f"the artifact's query encoder ({encoder.name}, no torch)"
                return WithVisionTower(encoder, self.torch_encoder), artifact
            log.warning(
                "the artifact carries no query encoder: loading the torch model",
                extra={"index_dir": str(index_dir)},
            )
        model = self.torch_encoder()
        self.description = "torch model"
        return model, load_artifact(index_dir, expected_model=model.identity)
