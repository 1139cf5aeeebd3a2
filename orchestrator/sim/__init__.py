"""The simulated cluster behind `deploy sim` (docs/simulator.md, docs/architecture.md).

state.py / faults.py / bin/: what the fake hccn_tool and npu-smi report; cluster.py: up, down,
SSH faults; openssh.py / embedded.py: the two SSH servers.
"""
