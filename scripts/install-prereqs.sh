#!/usr/bin/env bash
# Installs what RBS's run, tests and benchmarks need on a fresh Debian 12 machine (idempotent; root or sudo).
#   bazel-bootstrap  real bazel (4.2.3) for the e2e flows and the example (offline: e2e/offline_rules makes its
#                    native C++/shell rules and `bazel test` work without downloads)
#   g++              the C++ toolchain bazel finds for cc_* rules (bazel-bootstrap pulls it in via build-essential)
#   postgresql       the shared state store's contract and multi-replica tests
#   jq               the e2e scripts read the JSON ready files
#   iproute2         network namespaces for e2e/vpc_test.sh
#   procps, psmisc   pgrep/pkill for process-leak checks
#   clang, zlib1g-dev  Native AOT publish of jbazel
#   git              e2e/vpc_test.sh builds an uncommitted edit of a git checkout
#   tmux             e2e/terminal_test.sh: a real terminal, local bazel and jbazel side by side
#   util-linux       setpriv: the agent's commands die with it (PR_SET_PDEATHSIG)
#   bsdutils         script(1): a pseudo-terminal for jbazel's terminal tests
#   nginx            e2e/ingress_test.sh: the real ingress in front of the gateway replicas (started by the test on its
#                    own config and ports; the package's own service is not started)
#   chromium         the dashboard's browser test (Tests/Stacks/Dashboard): Playwright drives Debian's browser, it
#                    downloads none
set -euo pipefail

need=()
command -v bazel >/dev/null 2>&1 || need+=(bazel-bootstrap)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v killall >/dev/null 2>&1 || need+=(psmisc)
command -v clang >/dev/null 2>&1 || need+=(clang)
[ -e /usr/include/zlib.h ] || need+=(zlib1g-dev)
command -v git >/dev/null 2>&1 || need+=(git)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-prereqs: installing ${need[*]}"
    $sudo apt-get update -qq
    # Packages with a service (nginx, postgresql) must not start it: the tests start their own servers on their own
    # ports. Debian's policy-rc.d hook says so, when the machine has none of its own (containers usually do).
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    [ -z "$policy" ] || $sudo rm -f "$policy"
fi
command -v dotnet >/dev/null 2>&1 || { echo "install-prereqs: the .NET 10 SDK (dotnet) is required" >&2; exit 1; }
