#!/usr/bin/env bash
# A stand-in for bazel in the agent's tests: only bash and coreutils. The first argument selects the behaviour.
set -u
# For a client that does not share the agent's filesystem, the agent puts its rc files first, as bazel startup
# options (Agent/Bazelrc/); bazel's client consumes them, so does this stand-in. Other leading --options are startup
# options, as bazel's (only the shutdown mode looks at them).
startup=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --nohome_rc|--noworkspace_rc|--bazelrc=*) shift ;;
    --*) startup+=("$1"); shift ;;
    *) break ;;
  esac
done
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
  tty-report)      # on stderr: which of fds 0-2 are terminals, the controlling terminal, session, SIGHUP, size
    for fd in 0 1 2; do
      if [ -t "$fd" ]; then printf 'fd%s=tty ' "$fd" >&2; else printf 'fd%s=pipe ' "$fd" >&2; fi
    done
    if (exec 3</dev/tty) 2>/dev/null; then printf 'ctty=yes ' >&2; else printf 'ctty=no ' >&2; fi
    read -r -a stat < /proc/$$/stat
    if [ "${stat[5]}" = "$$" ]; then printf 'session-leader=yes ' >&2; else printf 'session-leader=no ' >&2; fi
    ignored=$(awk '/^SigIgn:/ { print $2 }' /proc/$$/status)
    if (( (16#$ignored & 1) != 0 )); then printf 'sighup=ignored ' >&2; else printf 'sighup=default ' >&2; fi
    printf 'size=%s\n' "$( { stty size </dev/tty; } 2>/dev/null || echo none)" >&2 ;;
  winch)           # prints the terminal size at start and after SIGWINCH (the latest size; bash may merge signals), for up to 60 s
    changed=0
    trap 'changed=1' WINCH
    echo "ready size $(stty size </dev/tty)" >&2
    for _ in $(seq 600); do
      sleep 0.1 & wait $!
      if [ "$changed" = 1 ]; then changed=0; echo "size $(stty size </dev/tty)" >&2; fi
    done ;;
  read-line)       # reads one line from stdin and reports it
    IFS= read -r line
    printf 'got [%s]\n' "$line" ;;
  staged)          # for k in 1 2 3: wait for $1/go$k, then $1/out$k to stdout and $1/err$k to stderr, then $1/done$k; exit 3 once $1/hold is gone
    for k in 1 2 3; do
      while [ ! -e "$1/go$k" ]; do sleep 0.02; done
      cat "$1/out$k" &
      out=$!
      cat "$1/err$k" >&2 &
      err=$!
      wait "$out" || exit 1
      wait "$err" || exit 1
      : > "$1/done$k"
    done
    while [ -e "$1/hold" ]; do sleep 0.02; done
    exit 3 ;;
  sleep)           # a tool that only waits (for the parent-death tests)
    echo ready
    exec sleep 600 ;;
  shutdown)        # what the agent runs for its build tool's server when it stops: noted in the workspace
    echo "startup=[${startup[*]}]" >> .fake-bazel-shutdowns ;;
  *)
    echo "fake-bazel: unknown mode '$mode'" >&2
    exit 2 ;;
esac
