from typing import Any, Final

MAX_MESH_BYTES: Final = 64

def check_batch(batch: Any) -> str | None: ...
