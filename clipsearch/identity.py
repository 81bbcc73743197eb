"""The identity of a CLIP model: what an index artifact records and what a serving encoder must match."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelIdentity(BaseModel):
    """Architecture, pretrained tag (or checkpoint file name) and a checksum of the weights actually loaded.

    Two encoders produce comparable vectors only when all three match; the checksum catches a local
    checkpoint that was swapped under the same name.
    """

    model_config = ConfigDict(frozen=True)

    arch: str
    pretrained: str
    weights_sha256: str
    dim: int

    def describe(self) -> str:
        return f"{self.arch}/{self.pretrained} (weights {self.weights_sha256[:12]}, dim {self.dim})"
