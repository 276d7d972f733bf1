#!/usr/bin/env bash
# Runs the hello binary (its path is the first argument) and checks what it prints.
set -euo pipefail
hello="$1"

expected_args=$'greet 1.2.0\n[1] Hello, bazel user! (10 bytes)\n[2] Hello, ! (0 bytes)'
actual_args="$("$hello" "bazel user" "")"
if [ "$actual_args" != "$expected_args" ]; then
    printf 'FAIL: hello with arguments printed:\n%s\nexpected:\n%s\n' "$actual_args" "$expected_args"
    exit 1
fi

expected_stdin=$'greet 1.2.0\n[1] Hello, one! (3 bytes)\n[2] Hello, two! (3 bytes)\nread 8 bytes from stdin'
actual_stdin="$(printf 'one\ntwo\n' | "$hello" --stdin)"
if [ "$actual_stdin" != "$expected_stdin" ]; then
    printf 'FAIL: hello --stdin printed:\n%s\nexpected:\n%s\n' "$actual_stdin" "$expected_stdin"
    exit 1
fi
echo "ok: hello greets its arguments and its stdin"
