#!/usr/bin/env bash
# Runs the whole suite (`make test`) again and again, to show it fails only for real reasons (issue #11):
# IDLE runs on the machine as it is, then LOADED runs beside one busy loop per core, the last of them with the
# test order shuffled. Each run's closing pytest line and wall time go to stdout; logs to $LOG_DIR.
# Usage: scripts/suite_stability.sh [IDLE=5] [LOADED=2] [SHUFFLE_SEED=$RANDOM]
set -uo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-5}
LOADED=${2:-2}
SEED=${3:-$RANDOM}
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/ember-stability.XXXX)}
mkdir -p "$LOG_DIR"
failures=0

run() {  # run NAME [pytest args...]
    local name=$1
    shift
    local start=$SECONDS
    if make test PYTEST_ARGS="$*" >"$LOG_DIR/$name.log" 2>&1; then status=pass; else status=FAIL; failures=$((failures + 1)); fi
    printf '%-10s %-4s %4ds  %s\n' "$name" "$status" $((SECONDS - start)) "$(grep -E '(passed|failed|error)' "$LOG_DIR/$name.log" | tail -1)"
}

busy_loops() {  # one spinning process per core, like a build or a training job beside the tests
    for _ in $(seq "$(nproc)"); do python3 -c 'while True: pass' & done
}

echo "logs in $LOG_DIR; $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
for i in $(seq "$IDLE"); do run "idle-$i"; done
for i in $(seq "$LOADED"); do
    busy_loops
    if [ "$i" -eq "$LOADED" ]; then run "loaded-$i" --shuffle "$SEED"; else run "loaded-$i"; fi
    kill $(jobs -p) 2>/dev/null
    wait 2>/dev/null
done
echo "$failures of $((IDLE + LOADED)) runs failed"
exit $((failures > 0))
