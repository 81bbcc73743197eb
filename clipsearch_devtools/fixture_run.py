"""Run the whole loop on a machine that cannot reach unsplash.com or Hugging Face (`make fixture-run`).

1. Generates an Unsplash Lite fixture (the exact zip format, PIL-drawn photos) and serves it on 127.0.0.1.
2. Trains the test-only tiny CLIP on it for a few seconds (so searches mean something) or reuses a cached one.
3. Copies this repository into `.fixture-run/repo` with params.yaml pointed at the fixture, the tiny model
   (as a local checkpoint, the air-gapped path) and an MLflow sqlite store, then runs `dvc repro` there.
   A separate workspace keeps the real pipeline's DVC state honest: `make run` never mistakes fixture
   outputs for the real data set.
4. Promotes the registered version to @champion and runs a search through the CLI.
5. Runs the same search re-ranked through the Gemini stand-in (the real google-genai client, the default
   `rerank.model`), and checks the request has the shape that model accepts (the stand-in answers 400 to what
   the real API rejects, and lists fields the model would ignore).
6. With `--serve`, starts the search service on http://127.0.0.1:8000 (chat page at /ui) until Ctrl-C,
   re-ranking through the stand-in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from clipsearch.settings import RerankSettings
from clipsearch_devtools.gemini_standin import GeminiStandin
from clipsearch_devtools.http_server import FixtureServer
from clipsearch_devtools.repo_copy import REPO, copy_repo
from clipsearch_devtools.tiny_clip import cached_tiny_clip
from clipsearch_devtools.unsplash_lite import build_fixture
from training.fetch import sha256_file

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    # DVC stage commands say `python`: this interpreter's venv goes first on PATH, activated shell or not.
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    full_env = {**os.environ, "PATH": path, "VIRTUAL_ENV": str(BIN.parent), **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=full_env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"fixture-run: `{' '.join(cmd)}` failed with exit code {result.returncode}")


def rerank_through_standin(repo: Path, query: str, standin: GeminiStandin, env: dict[str, str]) -> None:
    """`clipsearch search --json` re-ranked by the stand-in; fail unless the default model's request was accepted
    as sent (no 400, no field the model ignores) and its answer was applied."""
    cmd = [str(BIN / "clipsearch"), "search", query, "--json"]
    print(f"\n$ GEMINI_API_KEY=... {' '.join(cmd)}   # re-ranked through the Gemini stand-in", flush=True)
    done = subprocess.run(cmd, cwd=repo, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fixture-run: re-ranked search failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    model = RerankSettings().model
    sent = [r for r in standin.requests if r.model == model]
    problems = []
    if not result["rerank_applied"]:
        problems.append(f"not re-ranked: {result['rerank_fallback_reason']}")
    if not sent:
        problems.append(f"no request reached {model}")
    for req in sent:
        if req.ignored:
            problems.append(f"{model} would ignore {req.ignored}")
    if problems:
        raise SystemExit("fixture-run: " + "; ".join(problems))
    cfg = sent[-1].generation_config
    print(
        f"re-ranked by {model} through the stand-in: thinking {sent[-1].thinking_config}, "
        f"fields {sorted(k for k in cfg if k != 'responseSchema')}, {len(sent[-1].images)} thumbnails"
    )
    for r in result["results"]:
        print(f"{r['rank']}. {r['photo_id']}  why: {r['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / ".fixture-run")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--query", default="a foggy forest at dawn")
    parser.add_argument("--serve", action="store_true", help="then serve the champion on http://127.0.0.1:8000")
    args = parser.parse_args()

    workdir: Path = args.workdir.resolve()
    site, repo = workdir / "site", workdir / "repo"
    shutil.rmtree(workdir, ignore_errors=True)
    site.mkdir(parents=True)
    with FixtureServer(site) as server:
        info = build_fixture(site, n_photos=args.photos, seed=0, base_url=server.base_url)
        print(f"fixture: {sum(info.counts.values())} rows served at {server.zip_url}")
        checkpoint = cached_tiny_clip(site)
        print(f"tiny CLIP checkpoint: {checkpoint}")
        copy_repo(repo)
        params_path = repo / "params.yaml"
        params = yaml.safe_load(params_path.read_text())
        params["dataset"].update(
            url=server.zip_url, version="fixture", sha256=sha256_file(info.zip_path), limit=None, image_width=96
        )
        params["model"].update(arch="clipsearch-tiny", pretrained=str(checkpoint), device="cpu", precision="fp32")
        params["embed"]["chunk_size"] = 128
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))

        started = time.perf_counter()
        run([str(BIN / "dvc"), "repro"], cwd=repo)
        print(f"dvc repro: {time.perf_counter() - started:.1f} s wall for the whole pipeline", flush=True)
        run([str(BIN / "clipsearch"), "promote"], cwd=repo)
        run([str(BIN / "clipsearch"), "search", args.query, "--no-rerank"], cwd=repo)
        with GeminiStandin() as standin:
            gemini = {"GEMINI_API_KEY": "fixture-run-key", "CLIPSEARCH_RERANK__BASE_URL": standin.base_url}
            rerank_through_standin(repo, args.query, standin, gemini)
            if args.serve:
                env = {
                    "CLIPSEARCH_PARAMS": str(params_path),
                    "CLIPSEARCH_SERVICE__CACHE_DIR": str(workdir / "service-cache"),
                    "CLIPSEARCH_SERVICE__IMAGES_DIR": str(repo / "data" / "images"),
                    **gemini,
                }
                print("\nserving: open http://127.0.0.1:8000/ui  (API docs at /docs; Ctrl-C stops)", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    run(
                        [str(BIN / "uvicorn"), "services.search.app:app", "--host", "127.0.0.1", "--port", "8000"],
                        cwd=repo,
                        env=env,
                    )
    print(f"\ndone: the fixture workspace is {repo} (MLflow store: {repo / 'mlflow.db'})")


if __name__ == "__main__":
    main()
