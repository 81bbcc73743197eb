"""`clipsearch` command line: search the local index, promote a registered version, inspect an artifact.

`clipsearch search "a red bicycle"` goes through the same `SearchEngine` the service and the evaluation use.
"""

from __future__ import annotations

import json
import re
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
    from clipsearch.query import Query
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


WEIGHTED = re.compile(r"^([+-]?\d+(?:\.\d+)?):(.+)$", re.DOTALL)


def split_weight(value: str, default: float = 1.0) -> tuple[float, str]:
    """`2:snow` -> (2.0, "snow"); `snow` -> (default, "snow") (rclip's weight syntax)."""
    match = WEIGHTED.match(value.strip())
    if match is None:
        return default, value.strip()
    return float(match.group(1)), match.group(2).strip()


def build_terms(
    query: str | None, images: list[str], like: list[str], avoid: list[str], max_bytes: int
) -> list[dict[str, object]]:
    """The CLI's arguments as `Term` fields: QUERY and --image/--like with optional weights, --not negative."""
    terms: list[dict[str, object]] = []
    if query is not None and query.strip():
        weight, text = split_weight(query)
        terms.append({"text": text, "weight": weight})
    for value in images:
        weight, where = split_weight(value)
        if where.startswith(("http://", "https://")):
            terms.append({"image_url": where, "weight": weight})
            continue
        path = Path(where).expanduser()
        if not path.is_file():
            raise typer.BadParameter(f"{where}: no such file (give a path or an http(s) URL)", param_hint="--image")
        if path.stat().st_size > max_bytes:
            raise typer.BadParameter(
                f"{where}: {path.stat().st_size} bytes; the limit is {max_bytes} (inputs.max_image_bytes)",
                param_hint="--image",
            )
        terms.append({"image": path.read_bytes(), "weight": weight})
    for value in like:
        weight, photo_id = split_weight(value)
        terms.append({"photo_id": photo_id, "weight": weight})
    for value in avoid:
        weight, text = split_weight(value)
        terms.append({"text": text, "weight": -abs(weight)})
    return terms


@app.command()
def search(
    query: Annotated[
        str | None,
        typer.Argument(help='What to look for, e.g. "a foggy forest at dawn"; a weight may lead: "2:snow".'),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="An example image: a file PATH or an http(s) URL (repeatable; `2:PATH` weighs it)."
        ),
    ] = None,
    like: Annotated[
        list[str] | None,
        typer.Option(
            "--like", help="More like this indexed photo (PHOTO_ID; repeatable; the photo itself is left out)."
        ),
    ] = None,
    avoid: Annotated[
        list[str] | None,
        typer.Option(
            "--not", help="Something to avoid (TEXT, weight -1; `2:people` pushes twice as hard; repeatable)."
        ),
    ] = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="How many results to show.")] = 4,
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="How many nearest neighbours to consider.")] = 10,
    index_dir: Annotated[
        Path | None, typer.Option(help="Index artifact directory (default: index.output_dir).")
    ] = None,
    rerank: Annotated[bool, typer.Option(help="Re-rank with Gemini when GEMINI_API_KEY is set.")] = True,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="key=value, repeatable (AND across keys, OR within one): orientation=landscape, color=blue, "
            "min_color_coverage=0.3, photographer=..., country=Iceland, city=..., near=lat,lon,km, "
            "submitted_from=2021-01-01, submitted_to=..., camera_make=FUJIFILM, camera_model=..., featured=true, "
            "min_width=3000, min_height=...",
        ),
    ] = None,
    mode: Annotated[str | None, typer.Option(help="vector | hybrid | keyword (default: search.mode).")] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many results (page 2 of 4: --offset 4).")] = 0,
    cursor: Annotated[str | None, typer.Option(help="The next_cursor printed by the previous page.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Drop results with a lower cosine score.")] = None,
    sort: Annotated[str, typer.Option(help="relevance | newest | most_downloaded.")] = "relevance",
    dedupe: Annotated[bool, typer.Option(help="Collapse near-duplicate photos to the best one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    understand: Annotated[
        str, typer.Option(help="auto | on | off: let Gemini read the request into terms and filters first.")
    ] = "off",
) -> None:
    """Search the local index artifact built by `dvc repro`: by words, example images, similar photos, with
    things to avoid. The query vector is the normalised weighted sum of the terms' unit vectors."""
    with fail_cleanly():
        from pydantic import ValidationError

        from clipsearch.encoder import ClipEncoder
        from clipsearch.engine import load_engine
        from clipsearch.image_input import ImageLimits
        from clipsearch.query import Query, QueryError, filters_from_pairs
        from clipsearch.rerank.gemini import build_reranker
        from clipsearch.safe_fetch import FetchPolicy, SafeFetcher

        settings = get_settings()
        if query is not None and not query.strip():
            raise typer.BadParameter("the query is empty", param_hint="QUERY")
        terms = build_terms(query, image or [], like or [], avoid or [], settings.inputs.max_image_bytes)
        if not terms:
            raise typer.BadParameter("give a QUERY, --image, or --like", param_hint="QUERY")
        try:
            request = Query.model_validate(
                {
                    "terms": terms,
                    "k": k,
                    "candidates": max(k, candidates),
                    "rerank": "auto" if rerank else "off",
                    "mode": mode or settings.search.mode,
                    "filters": filters_from_pairs(filters or []),
                    "offset": offset,
                    "cursor": cursor,
                    "min_score": min_score,
                    "sort": sort,
                    "dedupe": dedupe,
                }
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
            )
            raise QueryError(problems) from None
        reranker, status = (
            build_reranker(settings.rerank, settings.dataset.data_dir / "images") if rerank else (None, "off")
        )
        engine = load_engine(
            index_dir or settings.index.output_dir, ClipEncoder.from_settings(settings.model), reranker, settings.search
        )
        engine.image_limits = ImageLimits.from_settings(settings.inputs)
        engine.fetcher = SafeFetcher(FetchPolicy.from_settings(settings.inputs))
        turn = _understood(settings, request, understand, has_text=bool(query and query.strip()))
        if turn is not None:
            request = turn.query  # the understood Query, merged with the explicit options, runs whole
        result = engine.search(request)
        page = result.page
        understood = [t.as_dict() for t in result.understood]
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "query": result.query,
                        "index_version": result.index_version,
                        "rerank_applied": result.rerank_applied,
                        "rerank_fallback_reason": result.rerank_fallback_reason,
                        "timings_ms": result.timings_ms,
                        "page": {k: v for k, v in page.__dict__.items() if k not in ("facets", "understood")},
                        "facets": page.facets,
                        "understood": page.understood,
                        "understanding": None if turn is None else {**turn.as_dict(), "not_applied": []},
                        "results": [
                            {
                                "rank": r.rank,
                                "photo_id": r.candidate.photo_id,
                                "score": r.candidate.score,
                                "image_url": r.candidate.image_url,
                                "description": r.candidate.description,
                                "submitted_at": r.candidate.submitted_at,
                                "downloads": r.candidate.downloads,
                                "reason": r.reason,
                            }
                            for r in result.results
                        ],
                    },
                    indent=2,
                    default=str,
                )
            )
            return
        shown = " ".join(_term_label(t) for t in understood)
        typer.echo(
            f"{shown}  (index {result.index_version}; mode {request.mode}; order {page.order}; re-rank: {status})"
        )
        if turn is not None:
            how = "understood" if turn.understood else f"searched as typed ({turn.reason})"
            typer.echo(f"understood as: {turn.summary}  [{how}]")
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
        total = "?" if page.total is None else f"{page.total}{'' if page.total_exact else '+'}"
        extra = f"; fewer than k: {page.fewer_than_k}" if page.fewer_than_k else ""
        typer.echo(f"results {page.offset + 1}-{page.offset + len(result.results)} of {total}{extra}")
        if page.dropped_duplicates:
            typer.echo(f"dropped {page.dropped_duplicates} near-duplicates")
        if page.next_cursor:
            typer.echo(f"next page: --cursor {page.next_cursor}")
        timings = "  ".join(f"{name} {ms:.1f} ms" for name, ms in result.timings_ms.items())
        typer.echo(f"timings: {timings}")


def _term_label(term: dict[str, object]) -> str:
    """`"snow"`, `-1:"people"`, `2:like:abc`, `image:PNG 40x30, ...` - one term as the CLI prints it."""
    value = term.get("text") or term.get("photo_id") or term.get("image_url") or term.get("image") or "?"
    body = f'"{value}"' if term["kind"] == "text" else f"{term['kind']}:{value}"
    weight = float(term["weight"])  # type: ignore[arg-type]
    return body if weight == 1 else f"{weight:g}:{body}"


def _understood(settings: Settings, request: Query, mode: str, *, has_text: bool) -> Turn | None:
    """Read QUERY with Gemini (`--understand auto|on`) into the Query to run; None for off or without QUERY.
    The options given (--image, --like, --not, --filter, --mode, paging, ...) win over what was understood.
    on without a key is an error."""
    if mode not in ("auto", "on", "off"):
        raise typer.BadParameter("must be auto, on or off", param_hint="--understand")
    if mode == "off" or not has_text:
        return None
    from clipsearch.understand.turn import Turns
    from clipsearch.understand.understander import GeminiUnderstander

    understander = GeminiUnderstander.from_settings(
        settings.understand, settings.rerank, max_query_chars=settings.service.max_query_chars
    )
    if understander is None and mode == "on":
        raise ConfigError("--understand on needs GEMINI_API_KEY (or rerank.api_key) and understand.enabled=true")
    turns = Turns(settings, understander, status="no Gemini key: searched as typed")
    try:
        return turns.begin(
            request.terms[0].text,
            base=request,
            mode=mode,  # type: ignore[arg-type]
            explicit_terms=request.terms[1:],
        )
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
