"""`make run`'s first step: check, in seconds, what the pipeline needs before DVC starts a stage.

A newcomer on a machine that cannot reach unsplash.com should read one paragraph saying so and what to do
(exit code 2), not a DVC stage failure wrapped around a retry loop. Checked: the settings load (a typo in
params.yaml or a CLIPSEARCH_ variable names the key), and the data set's host answers, unless a verified
download of the same URL is already on disk (then the pipeline can run offline from it).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from clipsearch.cli_support import configure_logging, run_cli
from clipsearch.errors import DownloadError
from clipsearch.settings import DatasetSettings, get_settings

log = logging.getLogger("training.preflight")

PROBE_TIMEOUT_S = 5.0


def _downloaded_before(dataset: DatasetSettings) -> bool:
    """True when the download stage already verified a zip from this URL (its record sits beside it)."""
    try:
        record = json.loads((dataset.data_dir / "lite" / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("url") == dataset.url


def check_dataset_reachable(dataset: DatasetSettings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Any HTTP answer from the data set's host passes; no connection is a DownloadError with what to do."""
    if _downloaded_before(dataset):
        log.info("a verified download of %s is on disk; not probing the network", dataset.url)
        return
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            client.head(dataset.url)
    except httpx.HTTPError as exc:
        host = urlsplit(dataset.url).netloc or dataset.url
        raise DownloadError(
            f"Cannot reach {host} to fetch Unsplash Lite from {dataset.url} ({type(exc).__name__}: {exc}). "
            "`make run` needs the internet for the data set and the CLIP weights. On this machine, "
            "`make fixture-run` runs the same pipeline end to end against a generated fixture served on "
            "127.0.0.1; with a local mirror of the zip, set dataset.url in params.yaml (or "
            "CLIPSEARCH_DATASET__URL) to it, and model.pretrained to a local checkpoint path for the weights."
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.preflight", description=__doc__)
    parser.parse_args(argv)
    configure_logging()
    settings = get_settings()
    check_dataset_reachable(settings.dataset)
    print(f"preflight: settings ok; data set {settings.dataset.url} (version {settings.dataset.version})")
    return 0


if __name__ == "__main__":
    run_cli(main, name="make run")
