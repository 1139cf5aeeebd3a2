"""Cost of one fake-tool invocation (hccn_tool get and ping), sh scripts vs the compiled fast path.

    python bench/sim_tools.py [--calls 200]

Builds a 2-node A3 cluster in a temp dir per implementation and times a loop of
`hccn_tool -i 3 -link -g` + `hccn_tool -i 3 -ping -g address ...` run the way the SSH servers run
commands (/bin/sh -c with the node's environment). This was a wall-clock assertion in
tests/test_sim_tools.py (< 10 ms per call); timings are benchmarks, not tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.sim.state import build_states, write_cluster


def per_call(impl: str, calls: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if impl == "sh":
            os.environ["DEPLOY_SIM_NO_FASTPATH"] = "1"
        else:
            os.environ.pop("DEPLOY_SIM_NO_FASTPATH", None)
        write_cluster(root, build_states([("a3n0", "127.0.11.1"), ("a3n1", "127.0.11.2")], "a3"))
        env = {"PATH": f"{root}/bin:/usr/bin:/bin", "DEPLOY_SIM_NODE": f"{root}/nodes/a3n0",
               "DEPLOY_SIM_ROOT": str(root), "LC_ALL": "C"}
        script = (f"i=0; while [ $i -lt {calls} ]; do hccn_tool -i 3 -link -g >/dev/null; "
                  "hccn_tool -i 3 -ping -g address 10.3.0.12 >/dev/null; i=$((i+1)); done")
        t0 = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", script], env=env, check=True)
        return (time.perf_counter() - t0) / (2 * calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    for impl in ("c", "sh"):
        print(f"{impl:3} {per_call(impl, args.calls) * 1000:.2f} ms per call")


if __name__ == "__main__":
    main()
