"""The registered index as an MLflow pyfunc model ("models from code": no pickled objects in the registry).

`mlflow.pyfunc.load_model("models:/clipsearch-index@champion")` gives a model whose `predict` takes a
DataFrame with a `query` column and returns the top results per query, through the same `SearchEngine`
the service uses. The service itself pulls only the artifact files and builds its own engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class IndexSearchModel(PythonModel):
    """Loads the verified index artifact and the encoder named in its manifest."""

    def load_context(self, context: PythonModelContext) -> None:
        from clipsearch.encoder import ClipEncoder
        from clipsearch.engine import load_engine
        from clipsearch.index.artifact import read_manifest
        from clipsearch.settings import get_settings

        index_dir = Path(context.artifacts["index"])
        manifest = read_manifest(index_dir)
        settings = get_settings().model.model_copy(update={"arch": manifest.model.arch})
        if Path(settings.pretrained).name != manifest.model.pretrained:
            settings = settings.model_copy(update={"pretrained": manifest.model.pretrained})
        self.engine = load_engine(index_dir, ClipEncoder(settings))

    def predict(
        self,
        context: PythonModelContext,  # noqa: ARG002 - MLflow's PythonModel.predict signature
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        k = int((params or {}).get("k", 4))
        rows: list[dict[str, Any]] = []
        for query in model_input["query"].astype(str):
            result = self.engine.search_text(query, k=k, candidates=max(k, 10), rerank=False)
            rows.extend(
                {"query": query, "rank": r.rank, "photo_id": r.candidate.photo_id, "score": r.candidate.score}
                for r in result.results
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(IndexSearchModel())
