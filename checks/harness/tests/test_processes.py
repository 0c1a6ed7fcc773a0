"""Processes started by checks run the code under test: distributed workers and a served app."""

from __future__ import annotations

import math
import time

import pytest

from checks.harness.impl import ImplChoice, ImplError, load_spec
from checks.harness.registry import load
from checks.processes import ChildCrashed, implementation, run_distributed, serve

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the catalogued softmax overflows, as intended

W01 = load().kata("w01_numpy")
MISTAKE = "reference+mistake:w01_numpy:softmax_without_max"


def _module(spec: str):
    module = load_spec(spec, W01)
    module.__kata_impl__ = spec
    return module


def test_an_implementation_choice_survives_its_spelling_as_a_string():
    assert ImplChoice("katas").spec("w01_numpy") == "katas"
    assert ImplChoice("reference", "mistake", "softmax_without_max").spec("w01_numpy") == MISTAKE
    assert load_spec("reference", W01).__name__ == "reference.phase1.w01_numpy"
    assert math.isnan(load_spec(MISTAKE, W01).softmax([[0.0, 800.0]])[0, 1])
    for bad in ("reference+mistake:w01_numpy:no_such_entry", "reference+mistake:w03_torch:softmax_without_max",
                "reference+oops"):
        with pytest.raises(ImplError, match="w01_numpy|KATA_IMPL"):
            load_spec(bad, W01)


def _sum_over_ranks(module, rank, world_size, value):
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(rank + value)])
    dist.all_reduce(total)
    return {"rank": rank, "total": total.item(), "softmax": module.softmax([[0.0, 800.0]]).tolist()}


def test_workers_join_one_group_and_run_the_chosen_implementation():
    results = run_distributed(_sum_over_ranks, 2, _module(MISTAKE), 10, kata="w01_numpy", timeout=60)
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["total"] for r in results] == [21.0, 21.0]
    assert all(math.isnan(r["softmax"][0][1]) for r in results)  # the mistake, loaded again in each worker


def _asserts_on_rank_1(module, rank, world_size):
    import torch
    import torch.distributed as dist

    assert rank != 1, "rank 1 disagrees"
    dist.all_reduce(torch.zeros(1))  # fails on rank 0 once rank 1 has gone: rank 1's failure is the one reported


def _crashes_in_check_code(module, rank, world_size):
    return [][rank]


def _waits_alone(module, rank, world_size):
    import torch
    import torch.distributed as dist

    if rank == 0:
        dist.all_reduce(torch.zeros(1))  # rank 1 never joins this collective
    else:
        time.sleep(60)


def _calls_a_stub(module, rank, world_size):
    return module.softmax([[1.0]])


def test_a_worker_failure_is_reported_as_what_it_is():
    reference = _module("reference")
    with pytest.raises(pytest.fail.Exception, match="rank 1 disagrees"):
        run_distributed(_asserts_on_rank_1, 2, reference, kata="w01_numpy", timeout=60)
    with pytest.raises(ChildCrashed, match="IndexError"):
        run_distributed(_crashes_in_check_code, 2, reference, kata="w01_numpy", timeout=60)
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        run_distributed(_calls_a_stub, 2, _module("katas"), kata="w01_numpy", timeout=60)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="still running after 3 s"):
        run_distributed(_waits_alone, 2, reference, kata="w01_numpy", timeout=3)
    assert time.monotonic() - started < 20


def served_spec_app():
    """An app that answers with the implementation it was given: what `serve` runs in its child."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    module = implementation("w01_numpy")

    async def which(request):
        return JSONResponse({"module": module.__name__})

    return Starlette(routes=[Route("/which", which)])


def test_a_served_app_runs_the_chosen_implementation_and_is_stopped():
    pytest.importorskip("uvicorn")
    import httpx

    with serve(served_spec_app, _module(MISTAKE), startup_timeout=60) as server:
        assert server.url.startswith("http://127.0.0.1:")
        answer = httpx.get(f"{server.url}/which", timeout=10).json()
        print("served and answered")  # the server's own output is kept apart from the check's
        assert "served and answered" not in server.output()
    assert answer["module"] == "reference.phase1.w01_numpy__mistake_softmax_without_max"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/which", timeout=2)


def stub_app():
    """An app whose construction calls a stub, as a learner's create_app does before it is written."""
    implementation("w01_numpy").softmax([[1.0]])


def app_that_crashes():
    return {}["no app"]


def app_failing_at_start_up():
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    @asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("the model did not load")
        yield

    return Starlette(lifespan=lifespan)


def test_a_server_that_cannot_start_is_reported_as_what_it_is():
    pytest.importorskip("uvicorn")
    with pytest.raises(NotImplementedError, match="not implemented yet"), serve(stub_app, _module("katas")):
        pass
    with pytest.raises(ChildCrashed, match="KeyError"), serve(app_that_crashes, _module("reference")):
        pass
    with pytest.raises(pytest.fail.Exception, match="(?s)exited with code.*the model did not load"), \
            serve(app_failing_at_start_up, _module("reference")):
        pass
