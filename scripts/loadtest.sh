#!/usr/bin/env bash
# Load test on loopback: the release server with tiny.en, distinct jfk-length uploads (so the
# cache never answers), first one client at a time, then 8 concurrent clients for 60 s.
# Prints requests/s, audio-seconds per second, p50/p99 latency, response counts and RSS.
# usage: scripts/loadtest.sh [DURATION_S=60] [CLIENTS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
CLIENTS=${2:-8}
SHARED=${SHARED:-../shared}
BIN=target/release/whisperd
PORT=${PORT:-18931}
export LOADTEST_AUDIO="$SHARED/eval/jfk.wav"
AUDIO_S=11.0
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }

$BIN serve --host 127.0.0.1 --port "$PORT" --queue-size 64 >/tmp/whisperd-loadtest.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$PID/status; }
curl -sf -F file=@"$LOADTEST_AUDIO" "http://127.0.0.1:$PORT/transcribe" >/dev/null
RSS_WARM=$(rss)

report() { # label json
  python3 - "$1" "$2" "$AUDIO_S" <<'PY'
import json, sys
label, j, audio = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
rps = j["requests"] / j["seconds"]
print(f"| {label} | {j['requests']} | {rps:.2f} | {rps * audio:.1f} | {j['p50_ms']:.0f} | {j['p99_ms']:.0f} | {j['ok']} | {j['busy_503']} | {j['bad'] + j['socket_errors']} |")
PY
}
echo "| clients | requests | req/s | audio s/s | p50 ms | p99 ms | 200 | 503 | lost or malformed |"
echo "|---|---|---|---|---|---|---|---|---|"
ONE=$(wrk -t1 -c1 -d"$((DURATION / 3))s" --timeout 120s -s scripts/loadtest.lua "http://127.0.0.1:$PORT" | tail -1)
report "1 (one at a time)" "$ONE"
MANY=$(wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --timeout 120s -s scripts/loadtest.lua "http://127.0.0.1:$PORT" | tail -1)
report "$CLIENTS" "$MANY"
RSS_AFTER=$(rss)
echo
echo "RSS after warm-up ${RSS_WARM} MB, after load ${RSS_AFTER} MB (growth $((RSS_AFTER - RSS_WARM)) MB)"
python3 - "$MANY" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
sys.exit(0 if j["bad"] == 0 and j["socket_errors"] == 0 else "some responses were lost or malformed")
PY
