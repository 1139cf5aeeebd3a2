"""Raw asyncssh baseline: the minimal fair fan-out. One asyncssh.connect per host, conn.run,
asyncio.gather. Same key (loaded once), same known_hosts (parsed once, strict checking).

    python asyncssh_raw.py HOSTS_JSON [--algs default|deploy]

--algs default: asyncssh's own algorithm preferences (whatever it negotiates with OpenSSH 9.2).
--algs deploy:  what `deploy exec` negotiates: curve25519-sha256 kex, aes128-gcm, no compression.
"""
import argparse
import asyncio
import sys

import asyncssh
import common

DEPLOY_ALGS = {"kex_algs": ["curve25519-sha256"],
               "encryption_algs": ["aes128-gcm@openssh.com"],
               "compression_algs": ["none"]}


async def main(cfg: dict, algs: dict) -> dict:
    key = asyncssh.read_private_key(cfg["identity_file"])
    known = asyncssh.read_known_hosts(cfg["known_hosts"])

    async def one(host: str):
        try:
            async with asyncssh.connect(host, cfg["port"], username=cfg["user"],
                                        client_keys=[key], known_hosts=known, **algs) as conn:
                r = await conn.run(common.COMMAND, check=False)
                return host, (r.exit_status, r.stdout)
        except (OSError, asyncssh.Error) as e:
            return host, (None, f"error: {e}")

    return dict(await asyncio.gather(*(one(h) for h in cfg["hosts"])))


def check(stdout: str, stderr: str, cfg: dict) -> dict:
    return common.check_outputs(common.parse_emitted(stdout), cfg["hosts"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("hosts_json")
    ap.add_argument("--algs", choices=["default", "deploy"], default="default")
    a = ap.parse_args()
    cfg = common.load_hosts(a.hosts_json)
    results = asyncio.run(main(cfg, DEPLOY_ALGS if a.algs == "deploy" else {}))
    common.emit(results)
    sys.exit(0 if common.check_outputs(results, cfg["hosts"])["ok"] else 1)
