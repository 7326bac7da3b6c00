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

# The kubelet refuses a loopback node IP, so the API server reaches it by the node's Hostname
# address, which is its name: localhost is the one name that resolves to loopback everywhere.
KUBE_NODE=${KUBE_NODE:-localhost}
# Pods sit on a bridge of their own with no route out of it; the service range has no
# kube-proxy behind it, so up routes it nowhere (unreachable) rather than out of the machine.
KUBE_POD_CIDR=${KUBE_POD_CIDR:-10.244.0.0/24}
KUBE_POD_GATEWAY=${KUBE_POD_GATEWAY:-10.244.0.1}
KUBE_SERVICE_CIDR=${KUBE_SERVICE_CIDR:-10.96.0.0/24}
KUBE_SERVICE_IP=${KUBE_SERVICE_IP:-10.96.0.1}
KUBE_BRIDGE=${KUBE_BRIDGE:-mpkube0}

KUBE_PAUSE_IMAGE=localhost/memprobe-kube-pause:1
