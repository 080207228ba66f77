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
# the dashboard's browser tests (Playwright drives this Chromium; it downloads no browser)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# InfluxDB 1.6: the tests of the InfluxDB level store run it (docs/influxdb.md)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# RabbitMQ, the optional Celery broker: its tests start their own node (tests/rabbitmq.py)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
# `ip netns` for the multi-host test (tests/integration/test_netns.py)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# nginx: tests/integration/test_nginx.py runs deploy/nginx.conf
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    # the packages may start system-wide daemons on the default ports; soundmon starts its own
    for svc in mosquitto redis-server influxdb rabbitmq-server nginx; do
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
    # the rabbitmq package leaves Erlang's port mapper running on 4369; the tests run their own
    if command -v epmd >/dev/null 2>&1; then $SUDO epmd -kill >/dev/null 2>&1 || true; fi
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
# compile the numba DSP kernels into their on-disk cache now (about 5 s of CPU once), so that
# no worker started later by the demo or the tests pays it while frames wait
.venv/bin/python -c "from workers import kernels; kernels.warm_up()"
# MicroPython (WebAssembly) for the firmware tests and uPlot for the dashboard, pinned by package-lock.json
npm_stamp=node_modules/.package-lock.json
if [ ! -f "$npm_stamp" ] || [ package-lock.json -nt "$npm_stamp" ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "soundmon installed in .venv ($(.venv/bin/soundmon --version 2>/dev/null || echo '?'))"
