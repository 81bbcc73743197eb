"""Graceful drain on SIGTERM: not-ready at once, keep serving for `service.drain_s`, then let uvicorn stop.

Kubernetes removes a terminating pod from the Service's endpoints while it sends SIGTERM (after `preStop`),
and kube-proxies and load balancers learn of it a little later. uvicorn's own SIGTERM handling closes the
listening socket at once, so requests routed in that gap would be refused. Here the first SIGTERM only marks
the service as draining: `/readyz` answers 503, responses carry `Connection: close`, and everything is still
served. After `drain_s` the original handler (uvicorn's) runs: it stops accepting, finishes the requests in
flight (bounded by `--timeout-graceful-shutdown`), runs the lifespan shutdown and exits. A second SIGTERM
during the drain stops at once.

Installed from the lifespan, which uvicorn runs in the main thread after installing its handlers; elsewhere
(in-process test clients run the lifespan in a worker thread) it does nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

log = logging.getLogger("services.search")


class Drainable(Protocol):
    draining: bool


def install_sigterm_drain(target: Drainable, drain_s: float) -> Callable[[], None] | None:
    """Replace the SIGTERM handler with a drain in front of the current one; returns a function that undoes it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):  # not under a server that handles SIGTERM: keep the default behaviour
        return None
    handover: Callable[[int, FrameType | None], object] = previous

    def finish(sig: int) -> None:
        log.info("draining", extra={"drain_s": drain_s})
        time.sleep(drain_s)
        log.info("drain over: no longer accepting; finishing requests in flight")
        handover(sig, None)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        # A signal handler: no logging (its lock may be held by the interrupted code), no waiting.
        if target.draining:
            handover(sig, frame)  # a second SIGTERM: stop now
            return
        target.draining = True
        threading.Thread(target=finish, args=(sig,), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore
