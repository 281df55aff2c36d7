"""Where things are in the checkout, for tests (the test kit itself needs no checkout)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MPY_SCRIPTS = REPO_ROOT / "tests" / "mpy"  # scripts the tests run under MicroPython
SCENARIOS = REPO_ROOT / "tests" / "scenarios"  # replay scenarios


def python_files(*folders: str) -> list[Path]:
    """Every ``.py`` under ``folders`` (relative to the checkout), sorted, caches skipped."""
    files: list[Path] = []
    for folder in folders:
        root = REPO_ROOT / folder
        if root.is_dir():
            files += [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)
