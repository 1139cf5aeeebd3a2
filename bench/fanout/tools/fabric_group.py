"""Fabric 3: ThreadingGroup(...).run(), one thread and one paramiko client per host.

    python fabric_group.py HOSTS_JSON

Fabric's defaults except what the workload needs: the sim's key (key_filename, no agent, no
~/.ssh key search), user and port; hide=True (no echo of 200 outputs), warn=True (a failing host
is a result, not an exception). Fabric itself sets paramiko's AutoAddPolicy and loads no
known_hosts; here every client gets exactly its host's key from the sim's known_hosts (parsed
once) and RejectPolicy, i.e. strict checking.
"""

import common


def main(cfg: dict) -> dict:
    import paramiko
    from fabric import ThreadingGroup
    from fabric.exceptions import GroupException

    known = paramiko.HostKeys(cfg["known_hosts"])
    group = ThreadingGroup(*cfg["hosts"], user=cfg["user"], port=cfg["port"],
                           connect_kwargs={"key_filename": cfg["identity_file"],
                                           "allow_agent": False, "look_for_keys": False})
    for cxn in group:
        entry = f"[{cxn.host}]:{cxn.port}"
        cxn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        for keytype, key in (known.lookup(entry) or {}).items():
            cxn.client.get_host_keys().add(entry, keytype, key)
    try:
        results = group.run(common.COMMAND, hide=True, warn=True)
    except GroupException as e:
        results = e.result
    per_host = {}
    for cxn, r in results.items():
        if isinstance(r, Exception):
            per_host[cxn.host] = (None, f"error: {type(r).__name__}: {r}")
        else:
            per_host[cxn.host] = (r.exited, r.stdout)
    group.close()
    return per_host


check = common.check_emitted


if __name__ == "__main__":
    common.run_tool(main)
