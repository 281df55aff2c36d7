#!/usr/bin/env bash
# Set up everything the suite needs and run all checks: ruff (lint + format), mypy, pytest.
# Exits non-zero if any step fails (every check still runs, so one log shows all problems).
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -m "not slow"    # extra arguments go to pytest
#
# With CI=true (as .ci/run sets), a test that would skip for a missing tool fails instead
# (tests/conftest.py), and a pytest run that executed no test is a failure.
set -uo pipefail

cd "$(dirname "$0")/.."
started=$(date +%s)

step_start=$started
step() { step_start=$(date +%s); printf '\n==== %s\n' "$*"; }
step_done() { printf '==== %s: %s (%d s)\n' "$1" "$2" "$(( $(date +%s) - step_start ))"; }

step "setup"
if ! bash scripts/setup.sh --system-tools; then
    echo "test.sh: setup failed; nothing was tested" >&2
    exit 1
fi
step_done setup ok

failed=()
run_check() {
    local name=$1; shift
    step "$name: $*"
    if "$@"; then
        step_done "$name" ok
    else
        step_done "$name" FAILED
        failed+=("$name")
    fi
}

run_check "ruff check" .venv/bin/ruff check .
run_check "ruff format" .venv/bin/ruff format --check .

# mypy on the CPython-only packages that exist so far (agent/core and firmware are excluded in
# pyproject.toml: they are MicroPython code without runtime typing).
mypy_targets=()
for package in agent gateway hil tools testkit; do
    if [ -n "$(find "$package" -name '*.py' -print -quit 2>/dev/null)" ]; then
        mypy_targets+=("$package")
    fi
done
run_check mypy .venv/bin/mypy "${mypy_targets[@]}"

step "pytest $*"
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    step_done pytest FAILED
    failed+=("pytest (no tests)")
elif [ "$rc" -ne 0 ]; then
    step_done pytest "FAILED (exit $rc)"
    failed+=(pytest)
else
    step_done pytest ok
fi

printf '\n==== total %d s\n' "$(( $(date +%s) - started ))"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'test.sh: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
