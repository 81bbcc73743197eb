"""A newcomer's first touch, as README gives it: a fresh copy of the repository, a plain shell (no virtualenv on
PATH, none activated), and `make`. Guards that nothing relies on an activated shell: DVC's stage commands say
`python`, and only the Makefile (or the fixture driver) puts the project's interpreter first on PATH.

The installed venv is reused (`make VENV=...`, marked as up to date) so the test stays fast; what it proves is
the PATH handling, not pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipsearch_devtools.repo_copy import copy_repo

pytestmark = pytest.mark.e2e

VENV = Path(sys.prefix)
INSTALLED = VENV / ".installed"


def _plain_shell_env(home: Path) -> dict[str, str]:
    """The environment of a fresh login shell: PATH without the venv, nothing activated, no CLIPSEARCH_ overrides."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "VIRTUAL_ENV", "MLFLOW_"))}
    path = [
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not Path(p).resolve().is_relative_to(VENV.resolve())
    ]
    keep.pop("PYTHONPATH", None)
    keep.pop("PYTHONHOME", None)
    return {**keep, "PATH": os.pathsep.join(path), "CLIPSEARCH_TEST_CACHE": str(home / "tiny-clip-cache")}


def _make(repo: Path, env: dict[str, str], *targets: str, timeout: float) -> subprocess.CompletedProcess[str]:
    if not INSTALLED.is_file():
        pytest.fail(f"{INSTALLED} is missing: run `make setup` first", pytrace=False)
    cmd = ["make", "--no-print-directory", f"VENV={VENV}", f"--assume-old={INSTALLED}", *targets]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("fresh-clone"))


def test_plain_shell_has_no_project_python(tmp_path: Path) -> None:
    """The premise: in this shell, `python` is not the project's interpreter (so the next tests mean something)."""
    env = _plain_shell_env(tmp_path)
    probe = subprocess.run(
        ["bash", "-c", "command -v python python3 || true"], env=env, capture_output=True, text=True, check=True
    )
    assert str(VENV) not in probe.stdout


def test_make_fixture_run_from_a_plain_shell(fresh_clone: Path, tmp_path: Path) -> None:
    done = _make(fresh_clone, _plain_shell_env(tmp_path), "fixture-run", timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in output
    assert "ModuleNotFoundError" not in output
    # `clipsearch search` printed ranked results: "1. <photo_id>  score 0.xxxx  http://..."
    assert any(line.startswith("1. ") and " score " in line for line in done.stdout.splitlines()), output[-4000:]


def test_make_run_offline_is_one_paragraph_and_exit_2(fresh_clone: Path, tmp_path: Path) -> None:
    env = {**_plain_shell_env(tmp_path), "CLIPSEARCH_DATASET__URL": "http://127.0.0.1:9/unsplash-lite.zip"}
    done = _make(fresh_clone, env, "run", timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors, done.stderr
    assert errors[0].startswith("make run: error: Cannot reach 127.0.0.1:9"), done.stderr
    assert "make fixture-run" in errors[0]
    assert not (fresh_clone / "data").exists(), "nothing half-done is left behind"
