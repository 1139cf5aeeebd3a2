"""Fixtures shared across test modules, declared once here so test functions can take them by name.

`farm` (tests/conftest_ssh.py): small real SSH servers on loopback. `cluster`
(tests/test_sim_vllm.py): a running simulated vLLM cluster for the fake-runtime tests.
"""
from conftest_ssh import farm  # noqa: F401
from test_sim_vllm import cluster  # noqa: F401
