"""The DP group rendezvous of the fake vLLM: the handshake socket the group's front end (external-LB
rank 0, the internal-LB master, nnodes node-rank 0) binds on --data-parallel-address:
--data-parallel-rpc-port (nnodes: --master-addr:--master-port), over real TCP.

Like vLLM's wait_for_engine_startup (vllm/v1/engine/utils.py): every engine core says HELLO and
gets an init reply at once; then it joins the DP group, and the group forms only when every
member has joined (the gloo/TCPStore barrier), so no rank can get READY before the whole group is
there; the front end is ready when every member reported READY. A formed group admits no new
member: a rank restarted alone waits (until its own ready timeout), as a real DP group cannot
take a replacement. With `local` set (fault master-unreachable: a firewall on the node), a HELLO
from an engine outside it is read and never answered, as a dropped connection looks to ZMQ: the
remote engine waits for its init until its handshake limit. Members exchange what the HCCL-like
checks need (devices, TLS, IPs, socket env) in the group message. JSON lines, bounded.
"""
from __future__ import annotations

import asyncio
import json


class Rendezvous:
    def __init__(self, size: int, on_change=None, local: set[int] | None = None):
        self.size = size
        self.local = local  # None: every member can reach us; else only these indexes
        self.on_change = on_change or (lambda: None)
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.joined: dict[int, dict] = {}
        self.ready: set[int] = set()
        self.complete = False
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind and listen (OSError when taken)."""
        self.server = await asyncio.start_server(self._conn, host, port, reuse_address=True, limit=1 << 20)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers.values():
            w.close()

    def pending(self, local: set[int]) -> tuple[int, int]:
        """(local, remote) members not READY yet."""
        missing = set(range(self.size)) - self.ready
        return len(missing & local), len(missing - local)

    @staticmethod
    def _send(w: asyncio.StreamWriter, msg: dict) -> None:
        try:
            w.write(json.dumps(msg).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index: int | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                msg = json.loads(line)
                op = msg.get("op")
                if op == "hello":
                    index = int(msg["index"])
                    if not 0 <= index < self.size or int(msg.get("size", self.size)) != self.size:
                        index = None  # another group's engine (wrong rpc port): no answer
                        return
                    if self.local is not None and index not in self.local:
                        index = None  # firewalled: read on, never answer
                        continue
                    old = self.writers.get(index)
                    if old is not None and old is not writer:
                        old.close()
                    self.writers[index] = writer
                    self._send(writer, {"op": "init"})
                elif op == "join" and index is not None:
                    if self.complete:
                        # a rank restarted alone cannot rejoin a formed DP group: it waits
                        # (restart the whole group, vllm#32136)
                        continue
                    self.joined[index] = msg["info"]
                    if len(self.joined) == self.size:
                        self.complete = True
                        members = self._members()
                        for w in self.writers.values():
                            self._send(w, {"op": "group", "members": members})
                elif op == "ready" and index is not None:
                    self.ready.add(index)
                    self.on_change()
                await writer.drain()
        except (ConnectionError, ValueError, KeyError, asyncio.LimitOverrunError, asyncio.IncompleteReadError,
                asyncio.CancelledError):
            return
        finally:
            if index is not None and self.writers.get(index) is writer:
                del self.writers[index]
                if not self.complete:
                    self.joined.pop(index, None)
                self.ready.discard(index)
            writer.close()

    def _members(self) -> list[dict]:
        return [self.joined[i] for i in sorted(self.joined)]
