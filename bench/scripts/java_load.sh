#!/usr/bin/env bash
# Start a Sluice broker with its defaults on a fresh data directory and a
# loopback port, drive it with Apache Kafka's Java client (bench/java/
# JavaLoad.java: produce, then consume everything back) and print the
# broker's CPU-seconds per GB produced and consumed. The broker is stopped at
# the end, and the data directory removed.
#
#   bench/scripts/java_load.sh [--sluice PATH] [--dir DIR] [--port N]
#       [--partitions N] [--records N] [--record-size BYTES]
#
# Defaults: target/release/sluice of this checkout, data in a temporary
# directory under /tmp (--dir puts it in a fresh directory under DIR), port 19092, 8 partitions, 2,000,000 records of 1,000 bytes
# (2 GB of payload each way). The Java client's jars are looked up as
# broker/tests/java.rs does ($SLUICE_JAVA_CLIENTS, else
# ${XDG_CACHE_HOME:-~/.cache}/sluice/java-clients; .ci/run installs them).
# The last line printed is JavaLoad's JSON object.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sluice="$root/target/release/sluice"
dir=""
port=19092
partitions=8
records=2000000
record_size=1000

while [ $# -gt 0 ]; do
    case "$1" in
        --sluice) sluice="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --partitions) partitions="$2"; shift 2 ;;
        --records) records="$2"; shift 2 ;;
        --record-size) record_size="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

jars="${SLUICE_JAVA_CLIENTS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/java-clients}"
for jar in kafka-clients slf4j-api lz4-java snappy-java zstd-jni; do
    [ -f "$jars/$jar.jar" ] || { echo "missing $jars/$jar.jar (.ci/run installs it)" >&2; exit 1; }
done
[ -x "$sluice" ] || { echo "no broker at $sluice (cargo build --release -p sluice-broker)" >&2; exit 1; }

work="$(mktemp -d /tmp/sluice-java-load.XXXXXX)"
# The broker's data goes in a fresh directory of its own, under --dir when
# given (e.g. a tmpfs), removed at the end.
if [ -n "$dir" ]; then
    mkdir -p "$dir"
    dir="$(mktemp -d "$dir/sluice-java-load.XXXXXX")"
else
    dir="$work/data"
fi
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work" "$dir"
}
trap cleanup EXIT

javac -nowarn -cp "$jars/*" -d "$work/classes" "$root/bench/java/JavaLoad.java"

"$sluice" serve \
    --set "listeners=PLAINTEXT://127.0.0.1:$port" \
    --set "log.dirs=$dir" \
    --set node.id=1 \
    >"$work/broker.log" 2>&1 &
broker_pid=$!

# Wait until the broker accepts connections (bounded; no fixed sleep).
deadline=$((SECONDS + 60))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        echo "the broker exited; its log:" >&2
        cat "$work/broker.log" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "the broker did not listen on 127.0.0.1:$port within 60 s" >&2
        exit 1
    fi
    sleep 0.1
done

echo "broker $sluice pid $broker_pid on 127.0.0.1:$port, data in $dir"
java -cp "$work/classes:$jars/*" JavaLoad "127.0.0.1:$port" "java-load" \
    "$partitions" "$records" "$record_size" "$broker_pid" "$(getconf CLK_TCK)"
