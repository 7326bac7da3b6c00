# shellcheck shell=bash disable=SC2034
# Shared by tests/kube/{build,up,down}: where things live and which loopback ports the
# cluster takes. Sourced, not run.
#
# The ports are not Kubernetes' defaults (2379, 6443, ...) so that a cluster started here does
# not collide with another etcd or API server on the same machine; each can be moved with the
# environment variable of the same name.

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$KUBE_DIR/../.." && pwd)
# Binaries and the pause image are kept across runs (git-ignored, like all of target/);
# the state of one cluster is not.
KUBE_BIN=${KUBE_BIN:-$REPO_DIR/target/kube/bin}
KUBE_IMAGES=${KUBE_IMAGES:-$REPO_DIR/target/kube/images}
KUBE_STATE=${KUBE_STATE:-$REPO_DIR/target/kube/state}

KUBE_ETCD_PORT=${KUBE_ETCD_PORT:-12379}
KUBE_ETCD_PEER_PORT=${KUBE_ETCD_PEER_PORT:-12380}
KUBE_API_PORT=${KUBE_API_PORT:-16443}
KUBE_CM_PORT=${KUBE_CM_PORT:-10257}
KUBE_SCHED_PORT=${KUBE_SCHED_PORT:-10259}
KUBE_KUBELET_PORT=${KUBE_KUBELET_PORT:-10250}
KUBE_KUBELET_HEALTHZ_PORT=${KUBE_KUBELET_HEALTHZ_PORT:-10248}
KUBE_PROXY_HEALTHZ_PORT=${KUBE_PROXY_HEALTHZ_PORT:-10256}
KUBE_PROXY_METRICS_PORT=${KUBE_PROXY_METRICS_PORT:-10249}

# The kubelet refuses a loopback node IP, so the API server reaches it by the node's Hostname
# address, which is its name: localhost is the one name that resolves to loopback everywhere.
KUBE_NODE=${KUBE_NODE:-localhost}
# Pods sit on a bridge of their own with no route out of it but the service range's, to the
# bridge's own address; kube-proxy turns the kubernetes Service's address there into the API
# server's, which listens on that same bridge address. The host routes the service range
# nowhere (unreachable) rather than out of the machine.
KUBE_POD_CIDR=${KUBE_POD_CIDR:-10.244.0.0/24}
KUBE_POD_GATEWAY=${KUBE_POD_GATEWAY:-10.244.0.1}
# The API server's one address: on the cluster's bridge, so that both the host and the pods
# reach it, and nothing outside the machine does.
KUBE_API_ADDRESS=${KUBE_API_ADDRESS:-$KUBE_POD_GATEWAY}
KUBE_SERVICE_CIDR=${KUBE_SERVICE_CIDR:-10.96.0.0/24}
KUBE_SERVICE_IP=${KUBE_SERVICE_IP:-10.96.0.1}
KUBE_BRIDGE=${KUBE_BRIDGE:-mpkube0}

KUBE_PAUSE_IMAGE=localhost/memprobe-kube-pause:1

# kube_proxy_cleanup LOG: removes kube-proxy's iptables rules, IPv4 and IPv6, for down (and
# for up, when a cluster ended without down left them): kube-proxy's own --cleanup, then the
# KUBE-FIREWALL chain and its jumps from INPUT and OUTPUT, which --cleanup leaves to the
# kubelet that shares it (this cluster's kubelet makes no iptables chains). Fails if any
# KUBE- chain is left.
kube_proxy_cleanup() {
  local ipt
  timeout 60 "$KUBE_BIN/kube-proxy" --cleanup >"$1" 2>&1
  for ipt in iptables ip6tables; do
    while "$ipt" -w -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -w -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    "$ipt" -w -t filter -F KUBE-FIREWALL 2>/dev/null && "$ipt" -w -t filter -X KUBE-FIREWALL
  done
  ! kube_proxy_rules_left
}
# kube_proxy_rules_left: whether any KUBE- chain is there, IPv4 or IPv6.
kube_proxy_rules_left() {
  local rules
  # Read whole first: with pipefail, grep -q ending the pipe early would fail it.
  rules=$({ iptables-save; ip6tables-save; } 2>/dev/null)
  grep -q '^:KUBE-' <<<"$rules"
}
