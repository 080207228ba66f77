#!/usr/bin/env bash
# Idempotent setup: Debian services the tests and the demo run, then .venv with soundmon[test].
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    # the packages may start system-wide daemons on the default ports; soundmon starts its own
    for svc in mosquitto redis-server; do
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
# MicroPython (WebAssembly) for the firmware tests, pinned by package-lock.json
npm_stamp=node_modules/.package-lock.json
if [ ! -f "$npm_stamp" ] || [ package-lock.json -nt "$npm_stamp" ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "soundmon installed in .venv ($(.venv/bin/soundmon --version 2>/dev/null || echo '?'))"
