"""The simulator's public API in one import (for the CLI, tests and benchmarks).

Nothing is implemented here: lifecycle.py (up/down/status/fault), manifest.py (sim.json),
layout.py (paths, node_env), processes.py (process table, listeners), errors.py. Imports point
one way: cluster -> lifecycle -> servers/state/runtime -> layout/manifest/processes -> errors.
"""
from __future__ import annotations

from .errors import SimError, SimUsageError
from .layout import DEFAULT_PORT, SIM_USER, authorized_keys_path, client_key_path, default_dir, host_key_path, node_env, sshd_dir
from .lifecycle import default_mode, down, fault, status, up
from .manifest import Sim, SimNode
from .processes import listening, sim_processes, wait_listening

__all__ = ["SimError", "SimUsageError", "DEFAULT_PORT", "SIM_USER", "authorized_keys_path",
           "client_key_path", "default_dir", "host_key_path", "node_env", "sshd_dir", "default_mode",
           "down", "fault", "status", "up", "Sim", "SimNode", "listening", "sim_processes",
           "wait_listening"]
