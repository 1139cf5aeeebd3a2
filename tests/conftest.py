"""Fixtures shared across test modules, declared once here so test functions can take them by name.

`farm` (tests/conftest_ssh.py): small real SSH servers on loopback. `cluster`
(tests/test_sim_vllm.py): a running simulated vLLM cluster for the fake-runtime tests.

Property tests are derandomized: CI replays the same bounded examples every run, so a red run is
a real regression, never the luck of the draw. `DEPLOY_FUZZ_EXPLORE=1` draws new examples.
"""
import os

from conftest_ssh import farm  # noqa: F401
from hypothesis import settings
from test_sim_vllm import cluster  # noqa: F401

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile("explore" if os.environ.get("DEPLOY_FUZZ_EXPLORE") else "repeatable")
