"""A simulated node's host view: DIR/nodes/<n>/root, the files a deployment touches on a node.

Commands on the node see it as DEPLOY_NODE_ROOT (node-side sh prefixes host paths with
`${DEPLOY_NODE_ROOT-}`), and the fake docker resolves every `-v SRC:DST` source under it. What
`sim up` puts there is what the standard vllm-ascend driver mounts name, so a container started
with them has the tools and one started without them lacks them, like on a real node:

    usr/local/Ascend/driver/tools/hccn_tool   wrapper: runs DIR/bin/hccn_tool for this node
    usr/local/bin/npu-smi                     wrapper: runs DIR/bin/npu-smi for this node
    usr/local/dcmi/                           (the DCMI library folder)
    usr/local/Ascend/driver/lib64/            (driver libraries)
    usr/local/Ascend/driver/version.info      Version=<driver version>
    etc/ascend_install.info                   the driver's install record
    etc/hccn.conf                             -> DIR/nodes/<n>/etc/hccn.conf (one file: HCCN_CONF)
    var/tmp/                                  deployments' state folders (/var/tmp/deploy/<name>)
    <model folder>/config.json                the inventory's model folder: model.path is a path
                                              in the container, so it is put where the inventory's
                                              container.mounts map it from (else at model.path)

The tree belongs to the nodes' user (it writes there, as root would on a real node).
"""
from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

from .layout import bin_dir, node_dir, node_root

INSTALL_INFO = """\
UserName=HwHiAiUser
UserGroup=HwHiAiUser
Driver_Install_Type=full
Driver_Install_Path_Param=/usr/local/Ascend
Driver_Install_For_All=no
Driver_Install_Mode=normal
Driver_Install_Status=complete
"""

# A DeepSeek-V3-shaped config.json: enough for anything that reads the model folder.
MODEL_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "vocab_size": 129280,
    "max_position_embeddings": 163840,
    "torch_dtype": "bfloat16",
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
}


def host_path(root: Path, node: str, path: str) -> Path:
    """A node's absolute path -> where it is in its host view (kept inside the view)."""
    norm = posixpath.normpath("/" + str(path))
    if norm.startswith("//"):
        norm = norm[1:]
    return node_root(root, node) / norm.lstrip("/")


def _wrapper(tool: Path, ndir: Path) -> str:
    return ("#!/bin/sh\n# deploy sim: this node's " + tool.name + " (the simulator's fake, DIR/bin)\n"
            f'DEPLOY_SIM_NODE="${{DEPLOY_SIM_NODE:-{ndir}}}"\nexport DEPLOY_SIM_NODE\n'
            f'exec {tool} "$@"\n')


def _put(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def model_host_path(model_path: str, mounts: list[str]) -> str:
    """Where the weights must lie on the node so that `model_path` exists inside the container:
    through the inventory mount with the longest destination above it (docker's -v SRC:DST)."""
    best = None
    for m in mounts or []:
        parts = str(m).split(":")
        if len(parts) < 2:
            continue
        src, dst = parts[0], parts[1].rstrip("/") or "/"
        if (model_path == dst or model_path.startswith(dst.rstrip("/") + "/")) and (best is None or len(dst) > len(best[1])):
            best = (src, dst)
    if best is None:
        return model_path
    src, dst = best
    return src.rstrip("/") + "/" + model_path[len(dst):].lstrip("/") if model_path != dst else src


def provision(root: Path, node: str, model_path: str | None, driver_version: str) -> Path:
    """Create the node's host view; returns DIR/nodes/<node>/root."""
    ndir, base, tools = node_dir(root, node), node_root(root, node), bin_dir(root)
    _put(base / "usr/local/Ascend/driver/tools/hccn_tool", _wrapper(tools / "hccn_tool", ndir), 0o755)
    _put(base / "usr/local/bin/npu-smi", _wrapper(tools / "npu-smi", ndir), 0o755)
    _put(base / "usr/local/dcmi/dcmi_interface_api.h", "/* deploy sim: DCMI header placeholder */\n")
    _put(base / "usr/local/Ascend/driver/lib64/driver/libascend_hal.so", "")
    _put(base / "usr/local/Ascend/driver/version.info", f"Version={driver_version}\n")
    _put(base / "etc/ascend_install.info", INSTALL_INFO)
    conf = base / "etc/hccn.conf"
    if conf.is_symlink() or conf.exists():
        conf.unlink()
    conf.symlink_to(ndir / "etc" / "hccn.conf")
    (base / "var/tmp").mkdir(parents=True, exist_ok=True)
    os.chmod(base / "var/tmp", 0o1777)
    if model_path:
        _put(host_path(root, node, model_path) / "config.json", json.dumps(MODEL_CONFIG, indent=2) + "\n")
    return base


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a tree to the nodes' user (only root can; others already own it)."""
    if os.geteuid() != 0:
        return
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
