"""How much of each node's stdout/stderr a run keeps in memory; the rest is only in the node log.

Shared by the transport and by `deploy exec`'s option defaults, in a module that imports nothing:
exec's options are built before it imports the SSH stack (see inventory_cache.prefetch).
"""
CAPTURE_HEAD = 512 * 1024   # bytes of each stream kept in memory from the start …
CAPTURE_TAIL = 256 * 1024   # … and from the end
