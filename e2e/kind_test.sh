#!/usr/bin/env bash
# The seed's Kind flow (architecture.md §2), end to end on a throwaway Kind cluster:
#   images built and loaded → chart installed (orchestrator on the Kubernetes backend, gateway behind ingress-nginx,
#   Spanner emulator + PGAdapter as the state store) → `jbazel build //...` through the ingress (tunnel mode) and
#   from a pod inside the cluster (direct mode) → assertions → teardown.
#
# Needs: docker (with a running engine), kind, kubectl, helm, openssl, and network access for base images,
# ingress-nginx and the emulator image. Not part of CI. Exit codes: 0 passed, 1 failed, 77 skipped (a tool is
# missing; the message names it).
#
# Environment:
#   RBS_E2E_KEEP=1          keep the cluster (and print how to delete it) instead of tearing down
#   RBS_E2E_CLUSTER=name    Kind cluster name (default rbs-e2e)
#   RBS_E2E_HOST=host       public host of the ingress (default rbs.127.0.0.1.nip.io: resolves to 127.0.0.1)
#   RBS_E2E_HTTPS_PORT=n    host port mapped to the ingress's 443 (default 8443)
#   RBS_E2E_STATE=type      chart state.type: spanner (the emulator + PGAdapter pod, as in the seed; default) or sqlite
#   RBS_API_KEY_ENV=name    environment variable jbazel reads its API key from (default RBS_API_KEY)
#   JBAZEL_TUNNEL_FLAGS     extra jbazel flags for the tunnel run (default --rbs_connect=tunnel)
#   JBAZEL_DIRECT_FLAGS     extra jbazel flags for the direct run (default --rbs_connect=direct)
set -euo pipefail

SKIP=77
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cluster="${RBS_E2E_CLUSTER:-rbs-e2e}"
host="${RBS_E2E_HOST:-rbs.127.0.0.1.nip.io}"
https_port="${RBS_E2E_HTTPS_PORT:-8443}"
state="${RBS_E2E_STATE:-spanner}"
[[ $state == spanner || $state == sqlite ]] || { echo "RBS_E2E_STATE must be spanner or sqlite" >&2; exit 2; }
api_key_env="${RBS_API_KEY_ENV:-RBS_API_KEY}"
ns=rbs
release=rbs
tag="e2e-$(date +%s)"
tunnel_flags="${JBAZEL_TUNNEL_FLAGS:---rbs_connect=tunnel}"
direct_flags="${JBAZEL_DIRECT_FLAGS:---rbs_connect=direct}"
ingress_nginx_version="controller-v1.12.1"

log() { printf '\n=== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- prerequisites: say exactly what is missing, exit 77 ------------------------------------------------------
missing=()
for tool in docker kind kubectl helm openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "SKIPPED: kind_test.sh needs ${missing[*]} on PATH (not installed)." >&2
  exit $SKIP
fi
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED: kind_test.sh needs a running Docker engine ('docker info' fails: only the client is installed?)." >&2
  exit $SKIP
fi

work="$(mktemp -d)"
cleanup() {
  local rc=$?
  if ((rc != 0)); then
    log "diagnostics (exit $rc)"
    kubectl -n "$ns" get pods -o wide 2>/dev/null || true
    kubectl -n "$ns" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 || true
    kubectl -n "$ns" logs deploy/$release-orchestrator --tail=100 2>/dev/null || true
    kubectl -n "$ns" logs deploy/$release-gateway --tail=50 2>/dev/null || true
  fi
  if [[ "${RBS_E2E_KEEP:-0}" == 1 ]]; then
    echo "cluster kept: kind delete cluster --name $cluster" >&2
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the example workspace: genrules only, so the agent's offline bazel can build it ----------------------------
ws="$work/workspace"
mkdir -p "$ws"
cat >"$ws/WORKSPACE" <<'EOF'
workspace(name = "rbs_kind_e2e")
EOF
cat >"$ws/BUILD" <<'EOF'
genrule(
    name = "hello",
    outs = ["hello.txt"],
    cmd = "echo 'hello from an rbs agent pod' > $@",
)

genrule(
    name = "upper",
    srcs = [":hello"],
    outs = ["upper.txt"],
    cmd = "tr a-z A-Z < $< > $@",
)
EOF
mkdir -p "$ws/broken"
cat >"$ws/broken/BUILD" <<'EOF'
genrule(
    name = "fails",
    outs = ["never.txt"],
    cmd = "echo 'failing on purpose' >&2; exit 3",
    tags = ["manual"],
)
EOF

# --- cluster with ingress-nginx -------------------------------------------------------------------------------
log "creating Kind cluster $cluster"
cat >"$work/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    kubeadmConfigPatches:
      - |
        kind: InitConfiguration
        nodeRegistration:
          kubeletExtraArgs:
            node-labels: "ingress-ready=true"
    extraPortMappings:
      - containerPort: 443
        hostPort: $https_port
        protocol: TCP
EOF
kind create cluster --name "$cluster" --config "$work/kind.yaml" --wait 120s
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/$ingress_nginx_version/deploy/static/provider/kind/deploy.yaml"

# --- images ---------------------------------------------------------------------------------------------------
log "building images (tag $tag)"
docker build -f "$root/Orchestrator/Dockerfile" -t "rbs-orchestrator:$tag" "$root"
docker build -f "$root/Gateway/Dockerfile" -t "rbs-gateway:$tag" "$root"
docker build -f "$root/Agent/Dockerfile" -t "rbs-agent:$tag" "$root"
docker build -f "$root/JBazel/Dockerfile" -t "rbs-jbazel:$tag" "$root"
# Until workspace sync ships, the agent builds a source snapshot baked into its image (agent.workspace.fromImage).
cat >"$work/Dockerfile.agent-e2e" <<EOF
FROM rbs-agent:$tag
COPY --chown=10001:10001 workspace/ /workspace/
EOF
docker build -f "$work/Dockerfile.agent-e2e" -t "rbs-agent-e2e:$tag" "$work"
for image in rbs-orchestrator rbs-gateway rbs-agent-e2e rbs-jbazel; do
  kind load docker-image --name "$cluster" "$image:$tag"
done

kubectl -n ingress-nginx wait --for=condition=Available deployment/ingress-nginx-controller --timeout=180s

# --- TLS for the ingress (ingress-nginx serves HTTP/2, hence gRPC, only over TLS) ------------------------------
log "self-signed certificate for $host"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
kubectl create namespace "$ns"
kubectl -n "$ns" create secret tls rbs-tls --cert "$work/tls.crt" --key "$work/tls.key"
# jbazel (.NET on Linux) trusts what OpenSSL trusts; SSL_CERT_FILE adds our certificate to the system bundle.
system_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f $system_bundle ]] || system_bundle=/etc/pki/tls/certs/ca-bundle.crt
cat "$system_bundle" "$work/tls.crt" >"$work/ca-bundle.crt" 2>/dev/null || cp "$work/tls.crt" "$work/ca-bundle.crt"

# --- install --------------------------------------------------------------------------------------------------
log "helm install ($state state store)"
api_key="$(openssl rand -hex 24)"
helm install "$release" "$root/helm/rbs" --namespace "$ns" --wait --timeout 5m \
  --set global.imageTag="$tag" \
  --set orchestrator.image.pullPolicy=Never \
  --set gateway.image.pullPolicy=Never \
  --set gateway.replicas=1 \
  --set agent.image.repository=rbs-agent-e2e \
  --set agent.image.pullPolicy=Never \
  --set agent.workspace.fromImage=true \
  --set agent.resources.requests.cpu=250m \
  --set agent.resources.requests.memory=512Mi \
  --set ingress.host="$host" \
  --set gateway.publicAddress="https://$host:$https_port" \
  --set ingress.tls.secretName=rbs-tls \
  --set state.type="$state" \
  --set state.spanner.emulator.enabled=true \
  --set "auth.apiKeys[0].user=e2e" \
  --set "auth.apiKeys[0].key=$api_key" \
  --set-string "networkPolicy.directClients[0].podSelector.matchLabels.rbs\.dev/client=true"

jbazel_host() {
  # jbazel from the repository, run on this machine: the "laptop" outside the cluster.
  (cd "$ws" && export "$api_key_env=$api_key" && SSL_CERT_FILE="$work/ca-bundle.crt" \
    dotnet run --project "$root/JBazel/JBazel.csproj" -c Release -- \
    --rbs_orchestrator="https://$host:$https_port" $tunnel_flags --rbs_status=always "$@")
}

# --- tunnel mode through the ingress --------------------------------------------------------------------------
log "tunnel mode: jbazel build //... through https://$host:$https_port"
set +e
jbazel_host build //... >"$work/tunnel.out" 2>"$work/tunnel.err"
rc=$?
set -e
cat "$work/tunnel.out" "$work/tunnel.err" >&2
((rc == 0)) || fail "tunnel build exited $rc"
grep -q "Build completed successfully" "$work/tunnel.err" || fail "tunnel build: bazel's success line missing"
grep -Eq "^rbs: agent [a-z0-9]+ \(kubernetes rbs-agent-" "$work/tunnel.err" || fail "tunnel build: no status line naming a pod agent"
agent_pod="$(sed -nE 's/^rbs: agent [a-z0-9]+ \(kubernetes (rbs-agent-[a-z0-9-]+)\).*/\1/p' "$work/tunnel.err" | head -n1)"
kubectl -n "$ns" get pod "$agent_pod" -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}' | grep -qx rbs-orchestrator \
  || fail "agent pod $agent_pod missing or not labelled by the orchestrator"

log "tunnel mode: a failing target gives bazel's exit code through jbazel"
set +e
jbazel_host build //broken:fails >"$work/fail.out" 2>"$work/fail.err"
rc=$?
set -e
((rc == 1)) || { cat "$work/fail.err" >&2; fail "failing target exited $rc, want bazel's 1"; }
grep -q "failing on purpose" "$work/fail.err" || fail "the genrule's stderr did not come through"

log "tunnel mode: second run reuses the warm agent"
jbazel_host build //:upper >"$work/warm.out" 2>"$work/warm.err" || { cat "$work/warm.err" >&2; fail "warm build failed"; }
grep -q "(kubernetes $agent_pod) warm" "$work/warm.err" || { cat "$work/warm.err" >&2; fail "second run did not reuse $agent_pod warm"; }

# --- direct mode from inside the cluster ----------------------------------------------------------------------
log "direct mode: jbazel in a pod, dialling the agent's pod IP"
kubectl -n "$ns" run rbs-client --image="rbs-jbazel:$tag" --image-pull-policy=Never --restart=Never \
  --labels=rbs.dev/client=true --command -- sleep 3600
kubectl -n "$ns" wait --for=condition=Ready pod/rbs-client --timeout=120s
kubectl -n "$ns" cp "$ws" rbs-client:/home/rbs/ws
set +e
kubectl -n "$ns" exec rbs-client -- sh -c \
  "cd /home/rbs/ws && $api_key_env='$api_key' jbazel --rbs_orchestrator=http://$release-orchestrator:50051 $direct_flags --rbs_status=always build //..." \
  >"$work/direct.out" 2>"$work/direct.err"
rc=$?
set -e
cat "$work/direct.out" "$work/direct.err" >&2
((rc == 0)) || fail "direct build exited $rc"
grep -q "Build completed successfully" "$work/direct.err" || fail "direct build: bazel's success line missing"

# --- NetworkPolicy: a pod without the client label cannot reach an agent directly --------------------------------
agent_ip="$(kubectl -n "$ns" get pod "$agent_pod" -o jsonpath='{.status.podIP}')"
kubectl -n "$ns" run rbs-stranger --image="rbs-jbazel:$tag" --image-pull-policy=Never --restart=Never \
  --command -- sleep 3600
kubectl -n "$ns" wait --for=condition=Ready pod/rbs-stranger --timeout=120s
if kubectl -n "$ns" exec rbs-stranger -- timeout 5 bash -c "exec 3<>/dev/tcp/$agent_ip/9011" 2>/dev/null; then
  # Kind's default CNI (kindnet) enforces NetworkPolicy only from Kind v0.24 / Kubernetes 1.31 on.
  echo "WARNING: an unlabelled pod reached agent $agent_ip:9011; is NetworkPolicy enforced by this CNI?" >&2
else
  echo "unlabelled pod cannot reach the agent directly: ok" >&2
fi

log "PASSED: kind e2e (tunnel through ingress, direct in-cluster)"
