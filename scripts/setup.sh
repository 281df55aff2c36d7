#!/usr/bin/env bash
# Set up a development environment on a fresh Debian machine (12 or newer): the .venv with
# meshelect installed editable and all its extras, and MicroPython type stubs in .stubs/.
#
#   bash scripts/setup.sh                 # Python side only (apt only if python3-venv is missing)
#   bash scripts/setup.sh --system-tools  # also the programs tests use: mosquitto, nftables,
#                                         # chromium, and the 32-bit MicroPython board stand-in
#   bash scripts/setup.sh --extras gateway,test
#
# Runs as root, or as a user with sudo for the apt part. Safe to run again: what is already
# there is kept, so a second run takes seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
started=$(date +%s)
extras="all"
system_tools=0
while [ $# -gt 0 ]; do
    case "$1" in
        --system-tools) system_tools=1 ;;
        --extras) extras="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n== %s\n' "$*"; }

# -- system packages (apt) ------------------------------------------------------------------
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); fi
fi
apt_install() {
    local needed=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
    done
    [ ${#needed[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] && [ ${#sudo_cmd[@]} -eq 0 ]; then
        echo "setup.sh: need root or sudo to install: ${needed[*]}" >&2
        exit 1
    fi
    say "apt-get install ${needed[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${needed[@]}"
}

# Pick a Python >= 3.11 (Debian 12 ships 3.11 as python3).
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$(command -v "$candidate")
        break
    fi
done
if [ -z "$python" ]; then
    apt_install python3 python3-venv
    python=$(command -v python3)
fi

if [ "$system_tools" -eq 1 ]; then
    # mosquitto: the real MQTT broker; nftables + iproute2: partitions and loss between
    # network namespaces; chromium: the dashboard's browser tests (never `playwright install`).
    # openssl: throw-away CAs for the MQTT TLS tests. openssh-server: the HIL Pi target's
    # SSH driver is tested against a real sshd on loopback (its service is never started).
    # postgresql: the server the PostgreSQL storage tests start in a temp dir (testkit/postgres.py).
    # gcc-multilib + make: the 32-bit MicroPython unix port (scripts/micropython32.sh).
    apt_install mosquitto mosquitto-clients nftables iproute2 chromium openssl openssh-server \
        postgresql gcc-multilib make
    # The distribution starts mosquitto on 1883 and a postgresql cluster on 5432; tests never
    # use them, leave them alone.
fi

# -- the virtual environment ------------------------------------------------------------------
venv_ok() { [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
uv=""
if command -v uv >/dev/null && uv --version >/dev/null 2>&1; then
    uv=$(command -v uv)
elif [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
fi
if ! venv_ok; then
    say "creating .venv with $python"
    rm -rf .venv
    if [ -n "$uv" ]; then
        UV_PYTHON_DOWNLOADS=never "$uv" venv -q --python "$python" .venv
    else
        # A bare Debian lacks ensurepip until python3-venv is installed.
        "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv && rm -rf .venv && "$python" -m venv .venv; }
    fi
fi
if [ -z "$uv" ]; then
    # uv installs the dependency set in seconds where pip takes most of a minute.
    say "installing uv into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check uv
    uv=.venv/bin/uv
fi

say "installing meshelect[$extras] (editable) into .venv"
export UV_PYTHON_DOWNLOADS=never
# Trust the system's certificate store (and SSL_CERT_FILE) like pip and curl do, so machines
# behind a TLS-inspecting proxy whose CA is installed system-wide work too.
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
"$uv" pip install -q --python .venv/bin/python -e ".[$extras]"

# MicroPython stubs for editors and type checkers, kept out of site-packages: the stub package
# ships empty requests/umqtt/mip packages that would shadow real ones.
if [ ! -f .stubs/.installed ]; then
    say "installing micropython-esp32-stubs into .stubs/"
    "$uv" pip install -q --python .venv/bin/python --target .stubs micropython-esp32-stubs
    touch .stubs/.installed
fi

if [ "$system_tools" -eq 1 ]; then
    # The ESP32 stand-in the firmware tests also run on: built once (about a minute on 2
    # cores), then kept in .cache/micropython-32/ (seconds on a later run).
    say "32-bit MicroPython unix port with the firmware frozen in"
    bash scripts/micropython32.sh
fi

say "ready in $(( $(date +%s) - started )) s: .venv/bin/meshelect --help"
