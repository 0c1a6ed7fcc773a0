"""Running a check session in a child process, so that a run that ends early is never silent.

Learner code can end the process that runs it: ``os._exit(0)``, a crash in a native library, the
operating system killing it for memory. pytest then never prints its summary and the exit code may even
be 0. So ``kata check``, ``kata next`` and ``kata watch`` run pytest in a child process that notes in a
small log file (named by ``KATA_RUN_LOG``) each check as it starts and the end of the session; when the
child is gone and the log has no end, the parent says which exercise and check were running and exits
non-zero. ``kata watch`` also uses the child to cancel a run when a file is saved again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import paths

RUN_LOG = "KATA_RUN_LOG"
FINISHED = "finished"
CANCELLED = -1  # what run() returns when ``cancel`` stopped the run


class RunLog:
    """The child's side: one tab-separated line per event, written through at once."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def from_env(cls) -> RunLog | None:
        path = os.environ.get(RUN_LOG)
        return cls(path) if path else None

    def write(self, *fields: str) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write("\t".join(fields) + "\n")


@dataclass(frozen=True)
class Ending:
    """How a supervised run ended, read from its log and exit status."""

    code: int  # the exit code; negative: killed by that signal
    finished: bool  # pytest reached the end of its session
    exercise: str | None  # the exercise whose check was running last
    check: str | None

    def explanation(self) -> str | None:
        """None for a run that ended normally; otherwise what happened, for the learner."""
        if self.finished:
            return None
        how = f"was killed by signal {-self.code}" if self.code < 0 else f"exited with code {self.code}"
        if self.check is None:
            if self.code != 0:
                return None  # it never got to run a check: pytest has said why (a usage error, say)
            return f"The run ended before any check started: the process {how} without a report."
        return (
            f"The run ended early while checking {self.exercise} ({self.check}): the process {how}, so "
            f"there is no report. Look in your code for os._exit, a crash, or memory use that grows without bound."
        )


def _read(path: Path, code: int) -> Ending:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    starts = [line.split("\t") for line in lines if line.startswith("start\t")]
    exercise, check = (starts[-1][1], starts[-1][2]) if starts else (None, None)
    return Ending(code, FINISHED in lines, exercise, check)


def _start(args: Sequence[str], log: Path, own_group: bool, child_main: Callable[[list[str]], int]) -> int | object:
    """A forked child running ``child_main(args)`` (a ``python -m pytest`` subprocess without fork)."""
    env_log = {RUN_LOG: str(log)}
    if not hasattr(os, "fork"):
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=paths.ROOT,
            env={**os.environ, **env_log},
            start_new_session=own_group,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: check, report, and leave without running the parent's cleanup
        code = 1
        try:
            if own_group:
                os.setpgid(0, 0)
            os.environ.update(env_log)
            code = child_main(list(args))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _poll(child) -> int | None:
    if isinstance(child, int):
        pid, status = os.waitpid(child, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if pid else None
    return child.poll()


def _kill(child) -> None:
    """End the child and everything it started (data loader workers, say)."""
    pid = child if isinstance(child, int) else child.pid
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)
        else:
            child.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run(
    args: Sequence[str],
    child_main: Callable[[list[str]], int],
    cancel: Callable[[], bool] | None = None,
) -> int:
    """Run ``child_main(args)`` (pytest) in a child; its exit code, made non-zero when it ended early.

    With ``cancel`` (asked every few milliseconds), the child gets a process group of its own, which is
    killed as soon as ``cancel()`` is true; the run then returns ``CANCELLED``. Without it, the child
    shares the terminal's process group, so Ctrl-C reaches it and pytest reports the interruption itself.
    """
    fd, name = tempfile.mkstemp(prefix="kata-run-", suffix=".log")
    os.close(fd)
    log = Path(name)
    try:
        child = _start(args, log, own_group=cancel is not None, child_main=child_main)
        code = None
        while code is None:
            try:
                if cancel is None and isinstance(child, int):
                    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
                    break
                code = _poll(child)
                if code is None:
                    if cancel is not None and cancel():
                        _kill(child)
                        _wait(child)
                        return CANCELLED
                    time.sleep(0.02)
            except KeyboardInterrupt:
                if cancel is not None:
                    _kill(child)
                    _wait(child)
                    raise
                # Ctrl-C reached the child too: let it print its report and end
        ending = _read(log, code)
    finally:
        log.unlink(missing_ok=True)
    explanation = ending.explanation()
    if explanation is None:
        return code
    print(f"\n{explanation}", flush=True)
    return code if code > 0 else 1


def _wait(child) -> None:
    if isinstance(child, int):
        os.waitpid(child, 0)
    else:
        child.wait()
