"""`make run`'s preflight: offline is one clear error (exit 2 through run_cli); a prior download skips the probe."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipsearch.errors import DownloadError
from clipsearch.settings import DatasetSettings
from training.preflight import check_dataset_reachable


class _Redirect(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/elsewhere.zip")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answering_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data/lite/1.2.1"
    server.shutdown()
    server.server_close()


def test_any_http_answer_passes(answering_host: str, tmp_path: Path) -> None:
    check_dataset_reachable(DatasetSettings(url=answering_host, data_dir=tmp_path), timeout_s=2)


def test_no_connection_says_what_to_do(tmp_path: Path) -> None:
    dataset = DatasetSettings(url="http://127.0.0.1:9/lite.zip", data_dir=tmp_path)
    with pytest.raises(DownloadError) as err:
        check_dataset_reachable(dataset, timeout_s=2)
    message = str(err.value)
    assert "Cannot reach 127.0.0.1:9" in message
    assert "make fixture-run" in message
    assert "CLIPSEARCH_DATASET__URL" in message


def test_a_verified_download_of_the_same_url_runs_offline(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/lite.zip"
    (tmp_path / "lite").mkdir()
    (tmp_path / "lite" / "dataset.json").write_text(json.dumps({"url": url}))
    check_dataset_reachable(DatasetSettings(url=url, data_dir=tmp_path), timeout_s=2)
    other = DatasetSettings(url="http://127.0.0.1:9/other.zip", data_dir=tmp_path)
    with pytest.raises(DownloadError):
        check_dataset_reachable(other, timeout_s=2)
