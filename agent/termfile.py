"""The highest election term this node has seen, kept in ``<state_dir>/term`` across restarts.

After a whole-site power cut the gateway still holds the mesh's last term; a node that started
again at term 0 would lead a term the gateway fences. So the node application reports every rise
of the highest term seen (event ``max_term``), this module writes it (a new file, fsync'ed, then
an atomic rename: a power cut leaves the old value or the new one), and the next boot gives it
back to the node, whose first claim goes above it. One write per new term: elections are rare.
A missing or unreadable file is term 0 (a wiped state dir; the gateway's FENCED answer then
tells the leader the term to go above).
"""

from __future__ import annotations

import os

TERM_FILE = "term"


def load_term(state_dir: str) -> int:
    try:
        with open(os.path.join(state_dir, TERM_FILE)) as f:
            term = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return 0
    return term if 0 <= term < 2**32 - 1 else 0


def save_term(state_dir: str, term: int) -> None:
    write_number(os.path.join(state_dir, TERM_FILE), term)


def write_number(path: str, value: int) -> None:
    """Write ``value`` to ``path`` so that a power cut leaves the old number or the new one:
    a new file, fsync'ed, then an atomic rename (the boot counter is written the same way)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{value}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
