"""Loads the harness plugin and sets up every check run: hypothesis profiles and offline Hugging Face.

Hypothesis profiles, chosen with ``KATA_PROFILE`` (``CI=true`` picks ``ci`` when it is unset):

- ``dev``: few examples, no deadline and no explain phase, for fast feedback while you work (the default);
- ``ci``: derandomized, so a run on CI is reproducible, with more examples;
- ``thorough``: many examples, for when you want to be sure.
"""

import os
import sys

import pytest
from hypothesis import HealthCheck, Phase, settings

# Checks never reach the Hugging Face hub unless the learner allows downloads (for the `hub` checks).
if os.environ.get("KATA_ALLOW_DOWNLOAD") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["checks.harness.plugin"]

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.differing_executors]}
# dev: a failing check should report within seconds. Hypothesis's explain phase (which lines ran only in
# failing examples) and its hunt for a second, different bug only cost time; shrinking stays, because a
# small example is what makes a failure readable.
settings.register_profile(
    "dev",
    max_examples=25,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
    **_common,
)
settings.register_profile("ci", max_examples=50, derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
# kata verify only needs to know *whether* a check fails, so it skips shrinking the counterexample.
settings.register_profile("verify", parent=settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate])
settings.load_profile(os.environ.get("KATA_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _torch_on_one_thread(request):
    """Checks run tiny tensors, for which one thread is several times faster than a pool of them.

    Training challenges (``slow``) get the cores, shared out between pytest-xdist workers: two workers with
    two threads each on two cores run several times slower than with one each. Benchmarks (``perf``) run on
    one thread, so that a ratio does not depend on how many cores the machine has (more threads speed up a
    long matrix product but not a step of tiny ones) and the capstone's CPU seconds are those of one thread.
    """
    torch = sys.modules.get("torch")  # imported by the check module, if it needs torch at all
    if torch is None:
        yield
        return
    wanted = 1
    if request.node.get_closest_marker("slow") and not request.node.get_closest_marker("perf"):
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        wanted = max(1, (os.cpu_count() or 1) // workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(wanted, threads))
    yield
    torch.set_num_threads(threads)
