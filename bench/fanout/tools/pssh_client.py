"""parallel-ssh 2.x: ParallelSSHClient (ssh2-python / libssh2, gevent), run_command, read output.

    python pssh_client.py HOSTS_JSON

parallel-ssh's defaults (pool_size 100, num_retries 3, no timeout) except the sim's key (pkey),
user and port. parallel-ssh has no host-key verification at all (no known_hosts option in
ParallelSSHClient or its native/ssh clients), so none is done here.
"""

import common


def main(cfg: dict) -> dict:
    from pssh.clients import ParallelSSHClient

    client = ParallelSSHClient(cfg["hosts"], user=cfg["user"], port=cfg["port"],
                               pkey=cfg["identity_file"], allow_agent=False)
    output = client.run_command(common.COMMAND, stop_on_errors=False)
    per_host = {}
    for ho in output:
        if ho.exception is not None:
            per_host[ho.host] = (None, f"error: {ho.exception!r}")
            continue
        text = "".join(line + "\n" for line in ho.stdout)
        per_host[ho.host] = (ho.exit_code, text)
    return per_host


check = common.check_emitted


if __name__ == "__main__":
    common.run_tool(main)
