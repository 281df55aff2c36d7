"""meshelect: leader election and data aggregation for IoT and edge meshes.

This file must stay importable on MicroPython: it is on the path to ``agent.core``.
"""

__version__ = "0.1.0"
