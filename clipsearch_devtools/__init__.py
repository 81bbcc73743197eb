"""Development tools shared by the tests, the benchmarks and `make fixture-run`; never imported by the product.

Why a package of its own and not `tests/`: benchmarks and the fixture run are not tests, and importing from a
test tree ties them to pytest's layout (and lets a test module's side effects leak in). Why not
`clipsearch.testing`: the service image installs `clipsearch`, and it should not carry fixture servers, a Gemini
stand-in and a tiny-CLIP trainer. This package is installed with the project (`pip install -e .`) and checked
by ruff and mypy, but the Dockerfile copies only `clipsearch/`, `training/` and `services/`.

- `unsplash_lite`: a generated Unsplash Lite zip + images in the exact published format.
- `http_server`: serves a fixture on 127.0.0.1 with injectable faults.
- `tiny_clip`: trains the test-only `clipsearch-tiny` CLIP on a fixture (cached by content).
- `gemini_standin`: a local stand-in for the Gemini REST API, scripted per test or benchmark.
- `processes`: free ports, child processes waited on over HTTP, an MLflow server.
- `repo_copy`: a clean copy of this checkout (for `dvc repro` in a scratch directory).
- `vectors`, `artifacts`: synthetic CLIP-like embeddings and artifact metadata for tests and benchmarks.
- `fixture_run`: the whole loop against the fixture (`make fixture-run`).

Modules here assume a source checkout (`repo_copy.REPO` is the directory above this package).
"""
