"""``python -m gateway``: the same as ``meshelect gateway``."""

from gateway.cli import main

main()
