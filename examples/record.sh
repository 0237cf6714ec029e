#!/bin/sh
# Record every subject under sensors. until Ctrl-C or SIGTERM, into one file per UTC
# hour; finished hours are gzipped and kept for 7 days.
exec natstream record 'sensors.>' \
    --dir "${RECORD_DIR:-./recordings}" --name sensors \
    --server "${NATS_URL:-nats://127.0.0.1:4222}" \
    --utc --compress gzip --retention 7d
