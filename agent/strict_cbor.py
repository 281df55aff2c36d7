"""cbor2, made strict for the wire: the CBOR functions CPython code passes to ``wire.Codec``.

    codec = wire.Codec(mesh, key, strict_cbor.dumps, strict_cbor.loads, boot=boot)

No indefinite lengths, no tags, no trailing bytes, bounded depth (docs/wire.md, "CBOR on both
runtimes"). CPython-only: nothing under ``agent/core`` imports it (the core is given its CBOR
functions), so the firmware build never contains it.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

__all__ = ["dumps", "loads"]

# Nesting a frame can need: frame > batch > readings > reading > metrics.
MAX_DEPTH = 6

# The tags cbor2 6.3 decodes on its own (found by probing tags 0..300 and the registered
# large ones). A tag missing here still cannot pass: its value fails the field checks.
CBOR2_TAGS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100)
CBOR2_TAGS += (256, 258, 260, 261, 1004, 43000, 55799)

dumps = cbor2.dumps


def _no_tags(decoder: Any, tag: Any = None) -> Any:
    raise ValueError("CBOR tags are not used on the wire")


# cbor2 decodes these tags itself (dates, bignums, shared values, regexes, ...) and calls
# ``tag_hook`` only for the others: override each, so every tag is refused.
_REFUSE_BUILTIN_TAGS = dict.fromkeys(CBOR2_TAGS, _no_tags)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """The one CBOR item in ``data``; raises (ValueError or a cbor2 error) for anything else."""
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp,
        tag_hook=_no_tags,
        semantic_decoders=_REFUSE_BUILTIN_TAGS,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
    )
    value = decoder.decode()
    if fp.tell() != len(data):
        raise ValueError("trailing bytes after the CBOR item")
    return value
