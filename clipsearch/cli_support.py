"""One way for every command-line entry point to end: a clean message for expected failures, no traceback.

A person running `python -m training.download` on a machine without network should read one paragraph that
says what failed and what to do, not 40 lines of httpx internals. Expected failures are `ClipsearchError`s
(their messages are written for people); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from clipsearch.errors import ClipsearchError

EXIT_OK = 0
EXIT_ERROR = 2  # an expected failure: the message says what to do
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines with a timestamp and the module name on stderr (stdout stays free for results)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: thousands of lines for an image download. Keep its warnings only.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def run_cli(main: Callable[[], int | None], *, name: str | None = None) -> NoReturn:
    """Run `main` and exit the process with its return code (None means 0).

    `ClipsearchError` -> its message on stderr and exit code 2; Ctrl-C -> a short note and exit code 130.
    Other exceptions propagate (a traceback is the right output for a bug).
    """
    prog = name or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "clipsearch")
    try:
        code = main()
    except ClipsearchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run it again to resume where it stopped.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if code is None else code)
