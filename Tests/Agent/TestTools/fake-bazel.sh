#!/usr/bin/env bash
# A stand-in for bazel in the agent's tests: only bash and coreutils. The first argument selects the behaviour.
set -u
mode="${1:-}"
shift || true
case "$mode" in
  exit)            # exit with code $1
    exit "$1" ;;
  kill-self)       # die of signal $1
    kill -s "$1" $$
    sleep 10
    exit 99 ;;
  echo-args)       # NUL-separated: physical cwd, argument count, each argument verbatim
    printf '%s\0' "$(pwd -P)" "$#" "$@" ;;
  env)             # the environment, NUL-separated
    env -0 ;;
  cat)             # stdin to stdout, byte for byte
    exec cat ;;
  two-files)       # $1 to stdout and $2 to stderr, concurrently
    cat "$1" &
    out=$!
    cat "$2" >&2 &
    err=$!
    wait "$out" || exit 1
    wait "$err" || exit 1 ;;
  flood)           # $1 bytes of zeros to stdout, then create marker file $2
    head -c "$1" /dev/zero || exit 1
    : > "$2" ;;
  trap-int)        # like bazel: on SIGINT stop the work and exit 8
    sleep 1000 &
    child=$!
    trap 'kill "$child" 2>/dev/null; exit 8' INT
    echo "ready grandchild=$child"
    wait "$child"
    exit 0 ;;
  ignore-signals)  # ignores SIGINT and SIGTERM (so does its grandchild): only SIGKILL ends it
    trap '' INT TERM
    sleep 1000 &
    echo "ready grandchild=$!"
    while true; do wait; done ;;
  grandchild)      # no traps; a background grandchild that outlives a SIGINTed parent unless the agent kills it
    sleep 1000 &
    echo "ready grandchild=$!"
    wait
    exit 0 ;;
  *)
    echo "fake-bazel: unknown mode '$mode'" >&2
    exit 2 ;;
esac
