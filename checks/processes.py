"""Checks that start processes: distributed workers and a served app, running the code under test.

A check's ``impl`` module lives in the check's own process. A process the check starts finds the same code
through the ``KATA_IMPL`` environment variable (``katas``, ``reference``, or a catalogued mistake such as
``reference+mistake:w21_alignment:ddp_sums_gradients`` while ``kata verify`` runs), which
``implementation(kata)`` turns back into the module. So a learner's distributed training step really runs in
two processes, and ``kata verify`` proves that a mistake that only shows across processes is caught.

Every wait here is bounded, everything listens on 127.0.0.1 only, on a port nobody else holds, and each
process started here leads its own process group, which is killed as a whole when the check ends, fails or
runs out of time.

- ``run_distributed(worker, world_size, impl, *args)``: ``worker(module, rank, world_size, *args)`` in
  ``world_size`` processes joined in a gloo process group; returns each rank's result.
- ``serve(factory, impl)``: a context manager serving the ASGI app that ``factory()`` builds with uvicorn in
  a child process; yields the server's URL and output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from checks.harness.impl import IMPL_ENV, load_spec
from checks.harness.outcomes import is_not_implemented

LOG_TAIL = 3000  # characters of a child's output shown when it fails
FAILURE_ORDER = ("todo", "caught", "crash")


class ChildCrashed(RuntimeError):
    """A started process failed in the check's own code, not in the code under test."""


def implementation(kata: str) -> ModuleType:
    """The code under test for ``kata`` in a process a check started (``KATA_IMPL``; the learner's by default)."""
    from checks.harness.registry import load

    return load_spec(os.environ.get(IMPL_ENV, "katas"), load().kata(kata))


def spec_of(impl: ModuleType) -> str:
    """The ``KATA_IMPL`` string of the ``impl`` fixture's module."""
    return getattr(impl, "__kata_impl__", "katas")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# distributed workers


def _outcome_of(err: BaseException) -> str:
    from checks.harness.verify import is_catch

    if is_not_implemented(err):
        return "todo"
    return "caught" if is_catch(err, (AssertionError, pytest.fail.Exception)) else "crash"


def _worker_main(rank: int, world_size: int, port: int, spec: str, kata: str, worker: Callable, args: tuple,
                 folder: str, timeout: float) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    os.setsid()  # its own process group, which the parent kills as a whole
    os.environ[IMPL_ENV] = spec
    torch.set_num_threads(1)
    try:
        # collectives wait longer than the parent does: a rank left waiting is reported as a hang, not a crash
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout + 30))
        try:
            result = worker(implementation(kata), rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, Path(folder) / f"{rank}.pt")
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the check, which reports it
        _record_failure(Path(folder) / f"{rank}.json", err)


def _record_failure(path: Path, err: BaseException) -> None:
    text = "".join(traceback.format_exception(err))
    record = {"outcome": _outcome_of(err), "error": f"{type(err).__name__}: {err}", "traceback": text}
    path.write_text(json.dumps(record), encoding="utf-8")


def run_distributed(worker: Callable, world_size: int, impl: ModuleType, *args: Any, kata: str,
                    timeout: float = 60.0) -> list[Any]:
    """Run ``worker(module, rank, world_size, *args)`` in ``world_size`` processes; return each rank's result.

    The processes join one gloo process group on loopback before ``worker`` runs and leave it afterwards;
    ``module`` is ``impl`` loaded again in that process. ``worker`` must be a top-level function of an
    importable module, and its result must be something ``torch.save`` can write (tensors, lists, dicts).
    A failure inside the code under test (or an assertion in ``worker``) fails the check with that
    process's traceback; a stub that is not written yet counts as not done; a worker still running after
    ``timeout`` seconds fails the check, and every worker is killed.
    """
    import torch

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kata-workers-") as folder:
        processes = [
            context.Process(target=_worker_main, args=(rank, world_size, port, spec_of(impl), kata, worker, args,
                                                       folder, timeout))
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        try:
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
        finally:
            running = [p for p in processes if p.is_alive()]
            for process in processes:
                _kill_group(process.pid)
                process.join(5)
        if running:
            pytest.fail(f"{len(running)} of {world_size} worker processes were still running after {timeout:g} s "
                        "and were stopped: a collective call (all_reduce, broadcast ...) that only some ranks "
                        "made waits for ever.", pytrace=False)
        failures = [(rank, json.loads(path.read_text(encoding="utf-8")))
                    for rank in range(world_size) if (path := Path(folder) / f"{rank}.json").exists()]
        if failures:
            # one rank's real failure makes the others fail too (their peer hung up): report the real one
            rank, record = min(failures, key=lambda f: (FAILURE_ORDER.index(f[1]["outcome"]), f[0]))
            _raise_child_failure(record, f"in worker process {rank} of {world_size}")
        results = []
        for rank, process in enumerate(processes):
            result = Path(folder) / f"{rank}.pt"
            if not result.exists():
                pytest.fail(f"Worker {rank} of {world_size} exited with code {process.exitcode} and no result.",
                            pytrace=False)
            results.append(torch.load(result, weights_only=False))
        return results


def _raise_child_failure(record: dict, where: str) -> None:
    if record["outcome"] == "todo":
        raise NotImplementedError(f"{record['error'].partition(': ')[2]} ({where})")
    if record["outcome"] == "caught":
        pytest.fail(f"{record['error']}\n({where}; its traceback:)\n{record['traceback'][-LOG_TAIL:]}", pytrace=False)
    raise ChildCrashed(f"the check's own code failed {where}:\n{record['traceback'][-LOG_TAIL:]}")


# --------------------------------------------------------------------------------------------------
# a served app


@dataclasses.dataclass(frozen=True)
class Served:
    """A server started by ``serve``: its base URL, and its output so far (for failure messages)."""

    url: str
    log_path: Path

    def output(self) -> str:
        """The end of everything the server process has printed (uvicorn logs the app's tracebacks there)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]


@contextlib.contextmanager
def serve(factory: Callable[[], Any], impl: ModuleType, *, startup_timeout: float = 60.0) -> Iterator[Served]:
    """Serve the ASGI app ``factory()`` builds with uvicorn on 127.0.0.1 in a child process; yield a ``Served``.

    ``factory`` must be a top-level function of an importable module; it runs in the child, where
    ``implementation(kata)`` gives the code under test (the child is forked where the system allows it, so
    nothing is imported twice). The server is yielded once it accepts connections (uvicorn opens its socket
    only after the app's start-up has finished). A failure while the app is built is reported like a
    worker's in ``run_distributed`` (a stub that is not written yet counts as not done); a server that exits
    or does not come up within ``startup_timeout`` seconds fails the check with the end of its output. On
    leaving the block the server's whole process group is stopped.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kata-server-") as folder:
        served = Served(f"http://127.0.0.1:{port}", Path(folder) / "output.log")
        served.log_path.touch()
        server = multiprocessing.get_context(method).Process(
            target=_serve_main, args=(factory, port, spec_of(impl), folder), daemon=True)
        server.start()
        try:
            _wait_until_listening(server, port, startup_timeout, served)
            yield served
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
            server.join(5)
            _kill_group(server.pid)
            if server.is_alive():  # killed before it had its own process group
                server.kill()
            server.join(5)


def _wait_until_listening(server, port: int, timeout: float, served: Served) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.is_alive():
            failure = served.log_path.with_name("failure.json")
            if failure.exists():
                _raise_child_failure(json.loads(failure.read_text(encoding="utf-8")),
                                     "in the server process, while the app was built")
            pytest.fail(f"The server exited with code {server.exitcode} before it listened. Its output ends:\n"
                        f"{served.output()}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    pytest.fail(f"The server did not listen on 127.0.0.1:{port} within {timeout:g} s. Its output ends:\n"
                f"{served.output()}", pytrace=False)


def _serve_main(factory: Callable[[], Any], port: int, spec: str, folder: str) -> None:
    import torch

    os.setsid()  # its own process group, which the parent stops as a whole
    output = open(Path(folder) / "output.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open until exit
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    sys.stdout = sys.stderr = output  # the check process's capture objects are not this process's to write to
    os.environ.update({IMPL_ENV: spec, "HF_HUB_OFFLINE": "1"})
    torch.set_num_threads(1)
    try:
        app = factory()
    except BaseException as err:  # noqa: BLE001 - the parent reports it as what it is
        _record_failure(Path(folder) / "failure.json", err)
        raise SystemExit(1) from None
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
