"""The example inventories, one per reference deployment guide (also ./inventories at the
repository root); packaged so `deploy demo` works from a plain `pip install .`."""
