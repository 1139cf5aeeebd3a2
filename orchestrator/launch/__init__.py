"""The bring-up: `up`, `status`, `teardown` as typed steps over one SSH connection per node.

ledger.py (what was launched, locally), http.py (HTTP through the open SSH connection),
nodeside.py (every node-side command, quoted), steps.py (the typed steps and the runner),
up.py / status.py / teardown.py (the three commands' logic), progress.py (what a person sees).
"""
