"""A CPU engine in a child process: a replica's batches computed outside the replica's GIL.

    engine = EngineProcess.spawn(checkpoint, variant="compiled", torch_threads=1)  # loads in the background
    if engine.ready():                                 # or EngineProcess.start(...): waits until it has loaded
        predictions = engine.predict_bars(bars, budgets)   # as InferenceEngine.predict_bars; blocks the caller only
    engine.close()

Why: the replica's event loop (HTTP, parsing, answers) and its inference thread share one GIL. The default
`compiled` engine releases it inside each segment (serving/aoti_gil_free.py), but its feature columns and the
ACT loop's Python between segments hold it (`python -m benchmarks.engine_gil`). In the child, the whole batch is
computed while the replica's loop goes on: the replica's inference thread only pickles the bars, then waits on
a socket with the GIL released.

The child is `python -m hrm_platform.serving.engine_process CHECKPOINT VARIANT THREADS FD`: it loads the engine
with `InferenceEngine.from_checkpoint` (the same verified artefacts as the replica's own engine), runs one batch
to warm it up, says it is ready, then answers one request at a time over the socket (pickles framed by
multiprocessing's Connection). A request that fails in the child raises `EngineProcessError` with the child's
message in the replica; the child keeps serving. A child that leaves a batch unanswered for `reply_timeout_s`
(the replica's serve.request_timeout_s) hangs: it is killed, and the replica's batches come back to its own
engine until its health check, which fails on the exited child, restarts it. The child exits when the socket
closes: on `close()`, or when the replica's process dies.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0  # loading and warming a compiled engine on a busy machine


class EngineProcessError(RuntimeError):
    """The engine process failed a request, could not start, or is gone."""


@dataclass
class EngineProcess:
    process: subprocess.Popen
    connection: Connection
    variant: str
    state: str = "loading"  # -> "ready" | "failed" (ready())
    error: str = ""  # why it failed to load
    closed: bool = False  # by close(): the child was asked to exit, not lost
    reply_timeout_s: float | None = None  # a batch unanswered this long: the child hangs, is killed (None: no limit)
    _first_message: threading.Lock = field(default_factory=threading.Lock, repr=False)  # ready() from any thread

    @classmethod
    def spawn(cls, checkpoint: str | Path, variant: str, torch_threads: int,
              reply_timeout_s: float | None = None) -> EngineProcess:
        """Start the child and return at once; it loads in the background (`ready()`)."""
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", __name__, str(checkpoint), variant, str(torch_threads), str(theirs.fileno())]
        process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        return cls(process, Connection(ours.detach()), variant, reply_timeout_s=reply_timeout_s)

    @classmethod
    def start(cls, checkpoint: str | Path, variant: str, torch_threads: int,
              timeout_s: float = READY_TIMEOUT_S, reply_timeout_s: float | None = None) -> EngineProcess:
        """Start the child and wait until its engine has loaded; raises EngineProcessError with its reason."""
        engine = cls.spawn(checkpoint, variant, torch_threads, reply_timeout_s)
        if not engine.wait_ready(timeout_s):
            engine.close()
            waited = f"the engine process did not load {checkpoint} in {timeout_s:.0f} s"
            raise EngineProcessError(engine.error or waited)
        return engine

    def wait_ready(self, timeout_s: float) -> bool:
        """ready(), waiting up to `timeout_s` for the child's first message."""
        self.connection.poll(timeout_s)
        return self.ready()

    def ready(self) -> bool:
        """Whether the child has loaded its engine; False while it loads, and for good once it failed to (its
        reason in `error`). Never blocks: it reads the child's first message once it has come."""
        with self._first_message:
            if self.state == "loading" and not self.closed and self.connection.poll(0):
                self._read_first_message()
        return self.state == "ready"

    def status(self) -> str:
        """loading, ready, failed (to load), exited (lost after loading) or closed: for /v1/health."""
        if self.closed:
            return "closed"
        ready = self.ready()
        return "exited" if ready and not self.alive else self.state

    def _read_first_message(self) -> None:
        try:
            self._reply()  # ("ready", None), or the child's load error
            self.state = "ready"
        except EngineProcessError as error:
            self.state, self.error = "failed", str(error)
            logger.warning("batches run in the replica's process: %s", error)

    def predict_bars(self, bars: Sequence[np.ndarray], budgets: Sequence[int | None]) -> list[Any]:
        """InferenceEngine.predict_bars in the child: one Prediction per request, in order. A child that gives
        no answer in reply_timeout_s hangs: it is killed (status "exited") and EngineProcessError says so."""
        try:
            self.connection.send((list(bars), list(budgets)))
        except OSError as error:
            raise EngineProcessError(f"the engine process is gone ({error})") from None
        if self.reply_timeout_s is not None and not self.connection.poll(self.reply_timeout_s):
            self.process.kill()
            self.process.wait()
            raise EngineProcessError(f"the engine process gave no answer in {self.reply_timeout_s:g} s; killed it")
        return self._reply()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """The child's resident memory (0 once it has exited)."""
        try:
            return psutil.Process(self.process.pid).memory_info().rss if self.alive else 0
        except psutil.NoSuchProcess:
            return 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the socket and reap the child. A ready child exits on EOF at once; one still loading would
        notice only when it has loaded, so it is killed (a reload must not wait for a load nobody needs)."""
        self.closed = True
        self.connection.close()
        if self.state != "ready":
            self.process.kill()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _reply(self) -> Any:
        try:
            kind, payload = self.connection.recv()
        except (EOFError, OSError):
            raise EngineProcessError(f"the engine process exited (code {self.process.poll()})") from None
        if kind == "error":
            raise EngineProcessError(payload)
        return payload


# ------------------------------------------------------------------------------------------------ the child


def serve(connection: Connection, checkpoint: str, variant: str, torch_threads: int) -> None:
    """Load, warm up, say ready, then answer requests until EOF."""
    from hrm_platform.serving.engine import InferenceEngine, synthetic_bars

    try:
        engine = InferenceEngine.from_checkpoint(checkpoint, variant=variant, torch_threads=torch_threads)
        engine.predict_bars([synthetic_bars(engine.bars_needed)] * 2, [None, None])  # first calls are slow
    except Exception as error:  # noqa: BLE001 - every load failure goes back to the replica as its message
        connection.send(("error", f"the engine process could not load {checkpoint} ({variant}): {error}"))
        return
    connection.send(("ready", None))
    while True:  # one request at a time: the replica's single inference thread sends them
        try:
            bars, budgets = connection.recv()
        except EOFError:
            return
        try:
            reply = ("ok", engine.predict_bars(bars, budgets))
        except Exception as error:  # noqa: BLE001 - a bad batch fails that batch, not the process
            reply = ("error", f"{type(error).__name__}: {error}")
        connection.send(reply)


def main(argv: list[str]) -> None:
    checkpoint, variant, torch_threads, descriptor = argv
    connection = Connection(int(descriptor))
    try:
        serve(connection, checkpoint, variant, int(torch_threads))
    except OSError:  # the replica closed its end while this process was answering: nobody to answer
        pass
    finally:
        connection.close()


if __name__ == "__main__":
    main(sys.argv[1:])
