#!/usr/bin/env bash
# Runs every test: the xunit suite (unit + functional on real Kestrel, real processes, real PostgreSQL)
# and the e2e scripts (real bazel; network namespaces; a real terminal in tmux). This is the README's test command; .ci/run calls it.
# Ends with one line "N passed, N failed, N skipped".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="${RBS_TEST_LOGS:-$ROOT/artifacts/test-logs}"
mkdir -p "$LOGS"

bash scripts/install-prereqs.sh || exit 1
if [ -x scripts/setup-postgres.sh ]; then
    eval "$(bash scripts/setup-postgres.sh)" || { echo "PostgreSQL setup failed" >&2; exit 1; }
fi

passed=0; failed=0; skipped=0
start=$(date +%s)

echo "== dotnet test"
# Build files under artifacts/dotnet (the SDK's artifacts layout), not <project>/bin and obj: a test run leaves
# nothing in the source tree. The same layout as the e2e scripts' publish (e2e/lib.sh DOTNET_LAYOUT).
DOTNET_LAYOUT=(-p:UseArtifactsOutput=true "-p:ArtifactsPath=${RBS_ARTIFACTS:-$ROOT/artifacts}/dotnet")
dotnet build Rbs.sln -c Release -nologo -v quiet "${DOTNET_LAYOUT[@]}" 2>&1 | tail -20
dotnet test Tests/Tests.csproj -c Release --no-build -nologo "${DOTNET_LAYOUT[@]}" \
    --logger "console;verbosity=normal" --logger "trx;LogFileName=tests.trx" --results-directory "$LOGS" \
    >"$LOGS/dotnet-test.log" 2>&1
dotnet_rc=$?
grep -E "^\s+(Failed|Skipped) " "$LOGS/dotnet-test.log" | head -50
# The console logger at normal verbosity ends with "Total tests: N / Passed: N / Failed: N / Skipped: N".
count() { grep -E "^\s+$1: *[0-9]+" "$LOGS/dotnet-test.log" | tail -1 | grep -oE "[0-9]+" || echo 0; }
total=$(grep -E "^Total tests: *[0-9]+" "$LOGS/dotnet-test.log" | tail -1 | grep -oE "[0-9]+" || echo 0)
p=$(count Passed); f=$(count Failed); s=$(count Skipped)
echo "dotnet test: total $total, passed $p, failed $f, skipped $s (exit $dotnet_rc)"
passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
if [ "$dotnet_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "dotnet test failed without a failed test (exit $dotnet_rc); last lines:"; tail -40 "$LOGS/dotnet-test.log"
    failed=$((failed + 1))
fi
if [ "$total" -eq 0 ]; then
    echo "dotnet test ran no test; last lines:"; tail -40 "$LOGS/dotnet-test.log"
    failed=$((failed + 1))
fi

# Each e2e script prints "CHECK PASS|FAIL" lines; every check counts as one test. One script per line.
E2E_SCRIPTS=(
    e2e/mirror_test.sh
    e2e/example_test.sh
    e2e/compare_test.sh
    e2e/vpc_test.sh
    e2e/terminal_test.sh
    e2e/ingress_test.sh
)
for script in "${E2E_SCRIPTS[@]}"; do
    [ -f "$script" ] || continue
    echo "== $script"
    bash "$script" >"$LOGS/$(basename "$script" .sh).log" 2>&1
    rc=$?
    grep -E "^CHECK (PASS|FAIL)|passed, .* failed" "$LOGS/$(basename "$script" .sh).log"
    p=$(grep -c "^CHECK PASS" "$LOGS/$(basename "$script" .sh).log"); f=$(grep -c "^CHECK FAIL" "$LOGS/$(basename "$script" .sh).log")
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$script exited $rc without a failed check; last lines:"; tail -30 "$LOGS/$(basename "$script" .sh).log"
        failed=$((failed + 1))
    fi
done

# The failures again, last, with their first message lines: CI shows only the tail of this output.
if [ "$failed" -ne 0 ]; then
    echo "== failures"
    grep -E -A4 "^\s+Failed " "$LOGS/dotnet-test.log" | grep -v -E "^\s+Stack Trace:" | head -60
    for script in "${E2E_SCRIPTS[@]}"; do
        log="$LOGS/$(basename "$script" .sh).log"
        [ -f "$log" ] && grep -H "^CHECK FAIL" "$log" | sed "s|^$LOGS/||" | head -20
    done
fi
echo "== total time $(( $(date +%s) - start )) s; logs in $LOGS"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
