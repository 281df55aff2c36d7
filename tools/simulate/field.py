"""The field: where the nodes are, what they start with, and which mesh each belongs to.

One seed gives one field, and every scheme of a run is played on the same field. Node ``i`` is
node id ``"n%04d" % i`` for meshelect's tie-break (smaller id wins), so index order is id order.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

# The setup most comparisons share (LEACH, SEP, HEED papers): 100 x 100 m, sink in the middle.
WIDTH = 100.0
HEIGHT = 100.0
SINK = (50.0, 50.0)
MAX_NODES = 10000  # node ids "n0000".."n9999" sort in index order

# Random streams: 0 places the nodes, 1 drives a scheme (each scheme gets a fresh stream with
# the same seed, so LEACH and SEP on a homogeneous field make the very same draws).
POSITIONS_STREAM = 0
SCHEME_STREAM = 1


def scheme_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SCHEME_STREAM])


def node_id(index: int) -> str:
    return "n%04d" % index


class Field:
    def __init__(
        self,
        nodes: int,
        seed: int,
        e0: float,
        advanced: float = 0.0,
        alpha: float = 0.0,
        meshes: int = 1,
        width: float = WIDTH,
        height: float = HEIGHT,
        sink: tuple[float, float] = SINK,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError("a field has 1..%d nodes" % MAX_NODES)
        grid = math.isqrt(meshes)
        if meshes < 1 or grid * grid != meshes:
            raise ValueError("meshes must be a square number (1, 4, 9, ...)")
        rng = np.random.default_rng([seed, POSITIONS_STREAM])
        self.n = nodes
        self.seed = seed
        self.width = width
        self.height = height
        self.sink = sink
        self.xy = rng.uniform((0.0, 0.0), (width, height), size=(nodes, 2))
        # SEP's heterogeneity: a fraction m of the nodes holds (1 + alpha) times the energy.
        self.advanced = np.zeros(nodes, dtype=bool)
        count = round(advanced * nodes)
        if count:
            self.advanced[rng.choice(nodes, size=count, replace=False)] = True
        self.initial = e0 * (1.0 + alpha * self.advanced)
        delta = self.xy[:, None, :] - self.xy[None, :, :]
        self.dist = np.sqrt((delta**2).sum(axis=2))
        self.d_sink = np.hypot(self.xy[:, 0] - sink[0], self.xy[:, 1] - sink[1])
        # meshelect: one mesh per cell of a grid x grid partition of the field.
        col = np.minimum((self.xy[:, 0] * grid / width).astype(int), grid - 1)
        row = np.minimum((self.xy[:, 1] * grid / height).astype(int), grid - 1)
        self.mesh = row * grid + col
        self.meshes = meshes
        self.link = link_per_mille(self.d_sink, self.farthest_from_sink())

    def farthest_from_sink(self) -> float:
        """Distance from the sink to the farthest corner of the field."""
        xs = (0.0, self.width)
        ys = (0.0, self.height)
        return max(math.hypot(x - self.sink[0], y - self.sink[1]) for x in xs for y in ys)


def link_per_mille(d_sink: NDArray[np.float64], farthest: float) -> NDArray[np.int64]:
    """meshelect's link figure: 1000 at the sink falling linearly to 0 at the farthest corner.

    The runtime's link is the worst of heartbeat loss and Wi-Fi signal; without loss in the
    model, the signal (falling with distance to the gateway) is what is left of it.
    """
    scaled = 1000.0 * (1.0 - d_sink / farthest)
    return np.clip(np.floor(scaled), 0, 1000).astype(np.int64)
