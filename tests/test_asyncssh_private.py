"""The transport leans on asyncssh internals (pinned in pyproject: asyncssh>=2.14,<2.25). If an
upgrade moves or reshapes any of them, this fails loudly here instead of as odd SSH behaviour."""
from __future__ import annotations

import inspect

import asyncssh


def test_client_config_loader_takes_what_the_transport_passes(tmp_path):
    from asyncssh.config import SSHClientConfig

    params = list(inspect.signature(SSHClientConfig.load).parameters)
    assert params[:5] == ["last_config", "config_paths", "reload", "canonical", "final"], params
    conf = tmp_path / "config"
    conf.write_text("Host n1\n  Port 2022\n  User alice\n")
    # exactly the call of Cluster._config: (None, paths, False, False, False, local_user, (), host, ())
    cfg = SSHClientConfig.load(None, [str(conf)], False, False, False, "me", (), "n1", ())
    assert cfg.get("Port") == 2022 and cfg.get("User") == "alice"


def test_algorithm_listers_exist_and_list_bytes():
    from asyncssh.encryption import get_encryption_algs
    from asyncssh.kex import get_kex_algs
    from asyncssh.mac import get_mac_algs

    for fn in (get_kex_algs, get_encryption_algs, get_mac_algs):
        algs = list(fn())
        assert algs and all(isinstance(a, bytes) for a in algs)
    assert b"curve25519-sha256" in list(get_kex_algs())


def test_known_hosts_match_is_private_and_returns_key_lists():
    key = asyncssh.generate_private_key("ssh-ed25519")
    line = "[127.0.0.1]:2222 " + key.export_public_key().decode()
    known = asyncssh.import_known_hosts(line)
    found = known._match("127.0.0.1", "", 2222)
    trusted, cas, revoked = found[:3]
    assert [k.public_data for k in trusted] == [key.convert_to_public().public_data]
    assert not cas and not revoked
    assert known._match("127.0.0.1", "", 22)[0] == []  # exact port: no port-less fallback


def test_the_installed_version_is_inside_the_pinned_range():
    major, minor = (int(x) for x in asyncssh.__version__.split(".")[:2])
    assert (2, 14) <= (major, minor) < (2, 25), asyncssh.__version__
