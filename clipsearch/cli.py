"""`clipsearch` command line: search the local index, promote a registered version, inspect an artifact.

`clipsearch search "a red bicycle"` goes through the same `SearchEngine` the service and the evaluation use.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipsearch.cli_support import EXIT_ERROR
from clipsearch.errors import ClipsearchError, ConfigError
from clipsearch.settings import Settings, get_settings

if TYPE_CHECKING:
    from clipsearch.understand.turn import Turn

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Expected failures print their message (what failed, what to do) and exit 2, without a traceback."""
    try:
        yield
    except ClipsearchError as exc:
        print(f"clipsearch: error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def search(
    query: Annotated[str, typer.Argument(help='What to look for, e.g. "a foggy forest at dawn".')],
    k: Annotated[int, typer.Option(min=1, max=100, help="How many results to show.")] = 4,
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="How many nearest neighbours to consider.")] = 10,
    index_dir: Annotated[
        Path | None, typer.Option(help="Index artifact directory (default: index.output_dir).")
    ] = None,
    rerank: Annotated[bool, typer.Option(help="Re-rank with Gemini when GEMINI_API_KEY is set.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    understand: Annotated[
        str, typer.Option(help="auto | on | off: let Gemini read the request into terms and filters first.")
    ] = "off",
) -> None:
    """Search the local index artifact built by `dvc repro`."""
    with fail_cleanly():
        from clipsearch.encoder import ClipEncoder
        from clipsearch.engine import load_engine
        from clipsearch.rerank.gemini import build_reranker

        settings = get_settings()
        if not query.strip():
            raise typer.BadParameter("the query is empty", param_hint="QUERY")
        reranker, status = (
            build_reranker(settings.rerank, settings.dataset.data_dir / "images") if rerank else (None, "off")
        )
        engine = load_engine(
            index_dir or settings.index.output_dir, ClipEncoder.from_settings(settings.model), reranker
        )
        turn = _understood(settings, query, understand, k, max(k, candidates))
        if turn is not None:
            from clipsearch.understand.compose import describe

            applied = {f"terms.{i}" for i, t in enumerate(turn.query.terms) if t.text is not None and t.weight > 0}
            not_applied = [p.label for p in describe(turn.query) if p.key not in applied]
            query = turn.query.text  # this engine searches text; the rest is reported, not applied
        result = engine.search(query, k=k, candidates=max(k, candidates), rerank=rerank)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "query": result.query,
                        "index_version": result.index_version,
                        "rerank_applied": result.rerank_applied,
                        "rerank_fallback_reason": result.rerank_fallback_reason,
                        "timings_ms": result.timings_ms,
                        "understanding": None if turn is None else {**turn.as_dict(), "not_applied": not_applied},
                        "results": [
                            {
                                "rank": r.rank,
                                "photo_id": r.candidate.photo_id,
                                "score": r.candidate.score,
                                "image_url": r.candidate.image_url,
                                "description": r.candidate.description,
                                "reason": r.reason,
                            }
                            for r in result.results
                        ],
                    },
                    indent=2,
                )
            )
            return
        typer.echo(f'"{query}"  (index {result.index_version}; re-rank: {status})')
        if turn is not None:
            how = "understood" if turn.understood else f"searched as typed ({turn.reason})"
            typer.echo(f"understood as: {turn.summary}  [{how}]")
            if not_applied:
                typer.echo(f"not applied by this engine yet: {', '.join(not_applied)}")
            for note in turn.notes:
                typer.echo(f"   note: {note}")
        if result.query_truncated:
            typer.echo("note: the query was longer than CLIP's 77-token context and was truncated")
        for r in result.results:
            c = r.candidate
            typer.echo(f"{r.rank}. {c.photo_id}  score {c.score:.4f}  {c.image_url}")
            if c.description:
                typer.echo(f"   {c.description[:100]}")
            if r.reason:
                typer.echo(f"   why: {r.reason}")
        timings = "  ".join(f"{name} {ms:.1f} ms" for name, ms in result.timings_ms.items())
        typer.echo(f"timings: {timings}")


def _understood(settings: Settings, text: str, mode: str, k: int, candidates: int) -> Turn | None:
    """Read the request with Gemini (`--understand auto|on`); None for off. on without a key is an error."""
    if mode not in ("auto", "on", "off"):
        raise typer.BadParameter("must be auto, on or off", param_hint="--understand")
    if mode == "off":
        return None
    from clipsearch.query import Query
    from clipsearch.understand.turn import Turns
    from clipsearch.understand.understander import GeminiUnderstander

    understander = GeminiUnderstander.from_settings(
        settings.understand, settings.rerank, max_query_chars=settings.service.max_query_chars
    )
    if understander is None and mode == "on":
        raise ConfigError("--understand on needs GEMINI_API_KEY (or rerank.api_key) and understand.enabled=true")
    turns = Turns(settings, understander, status="no Gemini key: searched as typed")
    try:
        return turns.begin(text, base=Query.from_text(text, k=k, candidates=candidates), mode=mode)  # type: ignore[arg-type]
    finally:
        if understander is not None:
            understander.close()


@app.command()
def promote(
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the @challenger version).")] = None,
) -> None:
    """Move @champion to the challenger if the quality gate passes against the current champion."""
    with fail_cleanly():
        from clipsearch.registry import promote as promote_version

        settings = get_settings().registry
        decision = promote_version(settings, version)
        for line in decision.reasons:
            typer.echo(f"  {line}")
        name = settings.model_name
        challenger = decision.challenger.version if decision.challenger else "?"
        if decision.passed:
            typer.echo(f"promoted {name} version {challenger} to @{settings.champion_alias}")
            return
        champion = decision.champion.version if decision.champion else "none"
        typer.echo(
            f"refused: {name} version {challenger} did not pass the quality gate against champion version "
            f"{champion} (tolerance {settings.gate_tolerance}); @{settings.champion_alias} is unchanged",
            err=True,
        )
        raise typer.Exit(1)


@app.command()
def verify(index_dir: Annotated[Path, typer.Argument(help="Index artifact directory.")]) -> None:
    """Verify an index artifact (checksums, format, counts) and print its manifest."""
    with fail_cleanly():
        from clipsearch.index.artifact import load_artifact

        artifact = load_artifact(index_dir)
        typer.echo(artifact.manifest.model_dump_json(indent=2))
        typer.echo(f"ok: {index_dir} is a valid index artifact, version {artifact.version}")


if __name__ == "__main__":
    app()
