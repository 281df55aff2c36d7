#!/usr/bin/env bash
# Build the 32-bit MicroPython unix port, the tests' stand-in for an ESP32: small ints and
# time.ticks_ms() wrap at 2**30 as on the board, and the firmware is frozen in with the boards'
# own manifest (firmware/boards/unix32/manifest.py), so code takes no heap, as on a board image.
#
#   bash scripts/micropython32.sh            # prints the interpreter's path when done
#
# The source, first found: $MICROPYTHON_SRC (a tree or a .tar.gz), ../shared/micropython/*.tar.gz
# (CI has it), else a shallow clone of the upstream tag v1.28.0 (needs git and network access;
# where neither is there, this fails with that message). Needs Debian's gcc-multilib (setup.sh
# installs it). The build is kept in .cache/micropython-32/ keyed by the source: the first one
# takes about 1.5 min on 2 cores; a later run only refreezes changed firmware (seconds), and
# one with nothing changed returns at once. The result is .cache/micropython-32/micropython.
#
# The unix port counts time.time() from 1970 (ports/unix/mpconfigport.h fixes
# MICROPY_EPOCH_IS_1970 and the port reads libc's time()): the ESP32's 2000 epoch cannot be set
# by a build flag, so the tests give the firmware a 2000-epoch clock through the unix hw layer.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
tag=v1.28.0
cache="$root/.cache/micropython-32"
manifest="$root/firmware/boards/unix32/manifest.py"
mkdir -p "$cache"

say() { printf '== micropython32: %s\n' "$*" >&2; }
fail() { printf 'micropython32: %s\n' "$*" >&2; exit 1; }

src="${MICROPYTHON_SRC:-}"
if [ -z "$src" ]; then
    for candidate in "$root"/../shared/micropython/*.tar.gz; do
        [ -f "$candidate" ] && src=$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate")
    done
fi
if [ -z "$src" ]; then
    # A tree unpacked by an earlier run (the tests rebuild from it when the firmware changes).
    for candidate in "$cache"/src-*/.ready; do
        [ -f "$candidate" ] && src=$(dirname "$candidate")
    done
fi
if [ -z "$src" ]; then
    src="$cache/clone-$tag"
    if [ ! -d "$src/py" ]; then
        say "cloning MicroPython $tag (no MICROPYTHON_SRC, no ../shared/micropython archive)"
        rm -rf "$src"
        git clone -q --depth 1 --branch "$tag" https://github.com/micropython/micropython "$src" ||
            fail "cannot fetch MicroPython $tag: set MICROPYTHON_SRC to a source tree or .tar.gz"
    fi
fi
[ -e "$src" ] || fail "MICROPYTHON_SRC=$src does not exist"

# The key of the source: the archive's sha256, or a tree's git commit (else its path).
if [ "$(dirname "$src")" = "$cache" ] && [ -f "$src/.ready" ]; then
    key=${src##*/src-}
elif [ -f "$src" ]; then
    key=$(sha256sum "$src" | cut -c1-16)
elif git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
    key=$(git -C "$src" rev-parse HEAD | cut -c1-16)
else
    key=$(printf '%s' "$(cd "$src" && pwd)" | sha256sum | cut -c1-16)
fi
# What is frozen in: the manifests and every file they may pick up.
frozen=$(cat "$manifest" firmware/boards/manifest.py \
    $(find firmware/app firmware/hw firmware/lib firmware/otaboot.py firmware/start.py agent/core agent/__init__.py \
        -name '*.py' | sort) |
    sha256sum | cut -c1-16)
stamp="$key $frozen"
exe="$cache/micropython"
if [ -x "$exe" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$exe"
    exit 0
fi

tree="$cache/src-$key"
if [ ! -f "$tree/.ready" ]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    if [ -f "$src" ]; then
        say "unpacking $(basename "$src")"
        tar -xzf "$src" -C "$tree" --strip-components=1
    else
        cp -a "$src"/. "$tree"/
    fi
    touch "$tree/.ready"
fi
# The build checks that micropython-lib is there even when the manifest needs none of it.
mkdir -p "$cache/no-micropython-lib"
echo "The manifest requires no micropython-lib package." >"$cache/no-micropython-lib/README.md"

jobs=$(nproc 2>/dev/null || echo 2)
say "building (source $key, frozen firmware $frozen)"
log="$cache/build.log"
if ! { make -C "$tree/mpy-cross" -j"$jobs" &&
    make -C "$tree/ports/unix" -j"$jobs" MICROPY_FORCE_32BIT=1 MICROPY_PY_BTREE=0 \
        MICROPY_PY_SSL=0 MICROPY_PY_FFI=0 FROZEN_MANIFEST="$manifest" \
        MPY_LIB_DIR="$cache/no-micropython-lib"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "build failed (log: $log); a 32-bit build needs gcc-multilib"
fi
cp "$tree/ports/unix/build-standard/micropython" "$exe.new"
mv "$exe.new" "$exe"
echo "$stamp" >"$cache/stamp"
echo "$exe"
