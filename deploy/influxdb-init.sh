#!/bin/sh
# Runs once, when the influxdb container sets itself up (DOCKER_INFLUXDB_INIT_MODE=setup):
# the bucket of 1-minute energetic aggregates next to the raw bucket (docs/influxdb.md).
# It keeps its data for ever (retention 0); the raw bucket's retention is INFLUXDB_RETENTION.
set -e
influx bucket create --name "${SOUNDMON_INFLUX_BUCKET_1M:-soundmon_1m}" \
    --org "$DOCKER_INFLUXDB_INIT_ORG" --retention 0
