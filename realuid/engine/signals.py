"""Clean stops: SIGINT (Ctrl-C) and SIGTERM end a run at the next step boundary, after a checkpoint.

While :class:`StopSignals` is entered, the first SIGINT or SIGTERM only sets
:attr:`StopSignals.signum`; the training loop finishes the step in progress
(and its evaluation, if one was due), writes a checkpoint and raises
:class:`RunInterrupted`. The CLI then exits with ``128 + signal number``
(130 for SIGINT, 143 for SIGTERM), the shell's convention for a process ended
by a signal. A second Ctrl-C stops at once (``KeyboardInterrupt``, exit 130),
keeping the last checkpoint written. SIGKILL cannot be caught: checkpoints
are atomic, so ``--resume`` continues from the last one written.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path


class RunInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after writing a checkpoint; ``exit_code`` = 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        saved = f"the checkpoint {checkpoint} was written" if checkpoint is not None else "no checkpoint was written"
        folder = Path(checkpoint).parent.parent if checkpoint is not None else "RUN_FOLDER"
        super().__init__(f"{name} received: the run stopped cleanly at step {step} and {saved}; "
                         f"continue it with `realuid run --resume {folder}`")

    @property
    def message(self) -> str:
        return str(self)


class StopSignals:
    """Context manager turning SIGINT/SIGTERM into a stop request (only in the main thread)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and writing a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
