//! deploy/kubernetes on a real cluster: the one-node Kubernetes of tests/kube (an API server
//! with RBAC and PodSecurity, the controller manager's endpoint-slice and disruption
//! controllers, a real kubelet on containerd). Every kustomization applies server-side; the
//! base runs with memprobe's image as its native sidecar and a stand-in for KMS (memprobe's
//! own workload as `kurento-media-server`, counting its sessions at /stats), and the kubelet's
//! probes, preStop hook, restarts and the Eviction API do what the manifests' comments say.
//!
//! Each test has a namespace of its own. The cluster comes from MEMPROBE_KUBECONFIG; without
//! it these tests skip (strict mode: fail). Timings go to the log, not into assertions.

// A real cluster runs on the real clock.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::deploy::FLEET_CALLS;
use crate::harness::kube::{
    Cluster, Images, Namespace, POD_DEADLINE, cluster, condition, container_status, kubectl_with,
    pod_ready, said, wait,
};
use crate::harness::{agent, request};

const ADMIN_TOKEN: &str = "kube-test-admin-token-0123456789abcdef";

/// The operator's two kinds, for the prometheus-operator overlay: the API server needs a CRD
/// before it takes such an object. Stand-ins with an open schema: no operator runs here.
fn operator_crds(cluster: &Cluster) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crd = |kind: &str, plural: &str| {
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                    "versions": [{
                        "name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                    }]
                }
            })
        };
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            crd("ServiceMonitor", "servicemonitors"), crd("PrometheusRule", "prometheusrules")
        ]});
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), list.to_string()).unwrap();
        cluster.run(&["apply", "--server-side", "-f", file.path().to_str().unwrap()]);
        for plural in ["servicemonitors", "prometheusrules"] {
            cluster.run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{plural}.monitoring.coreos.com"),
            ]);
        }
    });
}

/// Every kustomization under deploy/kubernetes that applies on its own (components are
/// applied through the overlay that opts into them).
fn kustomizations() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
    let mut all = vec!["base".to_string(), "janus".to_string()];
    let mut overlays: Vec<String> = std::fs::read_dir(format!("{root}/overlays"))
        .unwrap()
        .map(|e| format!("overlays/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    overlays.sort();
    all.extend(overlays);
    all
}

#[test]
fn every_kustomization_applies_server_side_and_memprobe_passes_pod_security() {
    let Some(cluster) = cluster() else { return };
    operator_crds(cluster);
    for kustomization in kustomizations() {
        // The level the namespace is given, as the PodSecurity admission enforces it:
        // baseline for the whole pod (the official KMS image runs as root), and restricted
        // for memprobe alone wherever it runs as non-root, checked below.
        // The host-network overlay's pods share the node's network, which baseline forbids:
        // its namespace is privileged, as the overlay's own Namespace says.
        let level = pod_security(&kustomization);
        let ns = cluster.namespace(
            "apply",
            &[
                ("pod-security.kubernetes.io/enforce", level),
                ("pod-security.kubernetes.io/warn", level),
            ],
        );
        let applied = ns.apply(&kustomization, "");
        let text = said(&applied);
        eprintln!("{kustomization}: {text}");
        assert!(applied.status.success(), "{kustomization}: {text}");
        assert!(
            !text.contains("would violate PodSecurity"),
            "{kustomization}: the pods would be refused in a {level} namespace: {text}"
        );
        let labels = ns.json(&["get", "namespace", &ns.name]).unwrap()["metadata"]["labels"]
            ["pod-security.kubernetes.io/enforce"]
            .clone();
        assert_eq!(
            labels, level,
            "{kustomization}: the namespace it ships says {level}"
        );
        let deployment = ns
            .json(&["get", "deployments"])
            .unwrap_or_else(|e| panic!("{kustomization}: {e}"));
        let deployment = &deployment["items"][0];
        assert!(
            deployment["metadata"]["name"].is_string(),
            "{kustomization}: one Deployment"
        );

        // memprobe's own container, in a pod alone under `restricted`, dry-run: what a
        // cluster that enforces restricted takes of it.
        let spec = &deployment["spec"]["template"]["spec"];
        let mut memprobe = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten()
            .find(|c| c["name"] == "memprobe")
            .cloned()
            .unwrap_or_else(|| panic!("{kustomization}: no memprobe container"));
        memprobe.as_object_mut().unwrap().remove("restartPolicy");
        memprobe.as_object_mut().unwrap().remove("env");
        if memprobe["securityContext"]["runAsNonRoot"] != true {
            eprintln!("{kustomization}: memprobe runs as root here: baseline only");
            continue;
        }
        let restricted = cluster.namespace(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        );
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "memprobe-alone"},
            "spec": {
                "securityContext": spec["securityContext"],
                "volumes": spec["volumes"].as_array().cloned().unwrap_or_default(),
                "containers": [memprobe],
            },
        });
        let file = restricted.file("pod.json", &pod.to_string());
        let created =
            restricted.output(&["create", "--dry-run=server", "-f", file.to_str().unwrap()]);
        assert!(
            created.status.success(),
            "{kustomization}: memprobe's container under restricted: {}",
            said(&created)
        );
    }
}

/// What the pods' service account may do, as `kubectl auth can-i --list` prints it, one
/// whitespace-collapsed line each. Without the fleet memprobe calls no Kubernetes API (the pod
/// mounts no token): the manifests grant nothing, so this is exactly what every authenticated
/// identity may (the cluster's system:basic-user, system:discovery and
/// system:public-info-viewer). The fleet adds its Role's rules, [`FLEET_CALLS`].
const SERVICE_ACCOUNT_MAY: &[&str] = &[
    "selfsubjectreviews.authentication.k8s.io [] [] [create]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
    "clustertrustbundles.certificates.k8s.io [] [] [get list watch]",
    "[/.well-known/openid-configuration/] [] [get]",
    "[/.well-known/openid-configuration] [] [get]",
    "[/api/*] [] [get]",
    "[/api] [] [get]",
    "[/apis/*] [] [get]",
    "[/apis] [] [get]",
    "[/healthz] [] [get]",
    "[/livez] [] [get]",
    "[/openapi/*] [] [get]",
    "[/openapi] [] [get]",
    "[/openid/v1/jwks/] [] [get]",
    "[/openid/v1/jwks] [] [get]",
    "[/readyz] [] [get]",
    "[/version/] [] [get]",
    "[/version] [] [get]",
];

/// A line of `kubectl auth can-i --list`, whitespace collapsed and its verbs sorted: the
/// order of a rule's verbs means nothing.
fn may_line(line: &str) -> String {
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.rsplit_once('[') {
        Some((head, verbs)) => {
            let mut verbs: Vec<&str> = verbs.trim_end_matches(']').split(' ').collect();
            verbs.sort();
            format!("{head}[{}]", verbs.join(" "))
        }
        None => line,
    }
}

/// The fleet's calls as `kubectl auth can-i --list` prints them.
fn fleet_may() -> Vec<String> {
    FLEET_CALLS
        .iter()
        .map(|(group, resource, verbs)| {
            let resource = match group {
                &"" => resource.to_string(),
                group => format!("{resource}.{group}"),
            };
            may_line(&format!("{resource} [] [] [{}]", verbs.join(" ")))
        })
        .collect()
}

#[test]
fn the_pods_service_account_may_do_exactly_what_memprobe_calls() {
    let Some(cluster) = cluster() else { return };
    operator_crds(cluster);
    for kustomization in kustomizations() {
        let fleet = kustomization == "overlays/fleet";
        let mut expected: BTreeSet<String> =
            SERVICE_ACCOUNT_MAY.iter().map(|s| may_line(s)).collect();
        if fleet {
            expected.extend(fleet_may());
        }
        let ns = cluster.namespace("rbac", &[]);
        let applied = ns.apply(&kustomization, "");
        assert!(applied.status.success(), "{}", said(&applied));
        let deployment = ns.json(&["get", "deployments"]).unwrap();
        let spec = &deployment["items"][0]["spec"]["template"]["spec"];
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "{kustomization}: no token in every container (the fleet's is memprobe's alone)"
        );
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        assert_eq!(
            account,
            if fleet { "memprobe" } else { "default" },
            "{kustomization}: an account of its own only with the fleet"
        );
        let who = format!("--as=system:serviceaccount:{}:{account}", ns.name);
        let list = cluster.run(&["auth", "can-i", "--list", &who, "-n", &ns.name]);
        let may: BTreeSet<String> = list.lines().skip(1).map(may_line).collect();
        assert_eq!(
            may, expected,
            "{kustomization}: the service account {account} may do more or less than memprobe \
             calls:\n{list}"
        );
    }
}

/// A question to the API server's authorizer: may the fleet's account do `verb` on
/// `resource` (`resource/subresource`) of `group` in `namespace` ("" for the whole cluster)?
#[derive(Clone, Copy)]
struct Ask<'a> {
    namespace: &'a str,
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
}

/// The authorizer's answers for the memprobe account of `home`: SubjectAccessReviews, with
/// the groups a service account's token carries, sent as one List.
fn authorizer_says(cluster: &Cluster, home: &str, asks: &[Ask]) -> Vec<bool> {
    let reviews: Vec<Value> = asks
        .iter()
        .map(|ask| {
            let (resource, subresource) =
                ask.resource.split_once('/').unwrap_or((ask.resource, ""));
            json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": format!("system:serviceaccount:{home}:memprobe"),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{home}"),
                               "system:authenticated"],
                    "resourceAttributes": {
                        "namespace": ask.namespace, "verb": ask.verb, "group": ask.group,
                        "resource": resource, "subresource": subresource,
                    },
                },
            })
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": reviews});
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), list.to_string()).unwrap();
    let created = cluster.output(&["create", "-f", file.path().to_str().unwrap(), "-o", "json"]);
    assert!(
        created.status.success(),
        "the SubjectAccessReviews: {}",
        said(&created)
    );
    // kubectl prints each object it created, one JSON document after another.
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&created.stdout)
        .into_iter::<Value>()
        .map(|doc| doc.expect("kubectl's JSON"))
        .flat_map(|doc| match doc["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![doc],
        })
        .collect();
    assert_eq!(answers.len(), asks.len(), "one answer a question");
    answers
        .iter()
        .map(|a| a["status"]["allowed"] == true)
        .collect()
}

/// The fleet component's Role and RoleBinding, applied alone: each of memprobe's calls is
/// allowed in its namespace, not in another one nor cluster-wide, and what lies next to them
/// is refused (a watch, a patch, the core group's Events, the pod's other verbs and
/// subresources, Secrets, the Deployment, its own RBAC).
#[test]
fn the_fleet_role_allows_each_call_of_memprobe_and_nothing_next_to_them() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet-rbac", &[]);
    let other = cluster.namespace("fleet-other", &[]);
    let applied = ns.apply_kustomization(&format!(
        "resources: []\ncomponents:\n  - {}/kubernetes/components/fleet\n",
        ns.deploy()
    ));
    assert!(applied.status.success(), "{}", said(&applied));
    let home = ns.name.as_str();
    let refused: &[(&str, &str, &[&str])] = &[
        (
            "coordination.k8s.io",
            "leases",
            &["watch", "patch", "deletecollection"],
        ),
        (
            "events.k8s.io",
            "events",
            &["get", "list", "watch", "update", "patch", "delete"],
        ),
        ("", "events", &["create", "patch", "update"]),
        (
            "",
            "pods",
            &[
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
        ),
        ("", "pods/exec", &["create", "get"]),
        ("", "pods/log", &["get"]),
        ("", "pods/eviction", &["create"]),
        ("", "pods/status", &["update", "patch"]),
        ("", "secrets", &["get", "list", "watch"]),
        ("", "configmaps", &["get", "list"]),
        ("", "serviceaccounts/token", &["create"]),
        ("apps", "deployments", &["get", "update", "patch"]),
        ("apps", "deployments/scale", &["update", "patch"]),
        ("apps", "replicasets", &["get", "list"]),
        (
            "rbac.authorization.k8s.io",
            "roles",
            &["update", "patch", "escalate", "bind"],
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["create", "update"],
        ),
    ];
    // (the question, the answer it must get, why)
    let mut asks: Vec<(Ask, bool, &str)> = vec![];
    for &(group, resource, verbs) in FLEET_CALLS {
        for &verb in verbs {
            for (namespace, want, why) in [
                (home, true, "one of memprobe's calls"),
                (
                    other.name.as_str(),
                    false,
                    "only in memprobe's own namespace",
                ),
                ("", false, "not cluster-wide"),
            ] {
                let ask = Ask {
                    namespace,
                    verb,
                    group,
                    resource,
                };
                asks.push((ask, want, why));
            }
        }
    }
    for &(group, resource, verbs) in refused {
        for &verb in verbs {
            let ask = Ask {
                namespace: home,
                verb,
                group,
                resource,
            };
            asks.push((ask, false, "not memprobe's to do"));
        }
    }
    let questions: Vec<Ask> = asks.iter().map(|(a, _, _)| *a).collect();
    let answers = authorizer_says(cluster, home, &questions);
    let wrong: Vec<String> = asks
        .iter()
        .zip(&answers)
        .filter(|((_, want, _), got)| want != *got)
        .map(|((a, want, why), _)| {
            format!(
                "{} {} ({}) in {:?}: {} ({why})",
                a.verb,
                a.resource,
                a.group,
                a.namespace,
                if *want { "refused" } else { "allowed" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "the authorizer's answers:\n{}",
        wrong.join("\n")
    );
}

/// `Cluster::service_account_kubeconfig`: a kubeconfig that is the fleet's account, for a
/// memprobe run on the host. With it kubectl is that account, makes each of memprobe's calls
/// for real (a lease written, replaced at its version, listed by label, deleted; an Event
/// created; the pods listed) and is refused what the Role leaves out.
#[test]
fn a_service_account_kubeconfig_is_that_account_and_makes_memprobes_calls() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet-kubeconfig", &[]);
    let applied = ns.apply_kustomization(&format!(
        "resources: []\ncomponents:\n  - {}/kubernetes/components/fleet\n",
        ns.deploy()
    ));
    assert!(applied.status.success(), "{}", said(&applied));
    let kubeconfig = cluster.service_account_kubeconfig(&ns.name, "memprobe");
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token is its owner's only");
    let kubectl = |args: &[&str]| {
        let mut cmd = kubectl_with(&kubeconfig);
        cmd.args(args);
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    };
    let ok = |args: &[&str]| -> String {
        let output = kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} as the account: {}",
            said(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let refused = |args: &[&str]| {
        let output = kubectl(args);
        assert!(
            !output.status.success() && said(&output).contains("Forbidden"),
            "kubectl {args:?} is refused to the account: {}",
            said(&output)
        );
    };
    let whoami: Value = serde_json::from_str(&ok(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{}:memprobe", ns.name)
    );

    // The kubeconfig's namespace is the account's: no -n needed.
    assert!(ok(&["get", "leases", "-o", "name"]).trim().is_empty());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kms-slot-0", "labels": {"memprobe.io/fleet": "kms"}},
        "spec": {"holderIdentity": "kms-0", "leaseDurationSeconds": 30},
    });
    let file = ns.file("lease.json", &lease.to_string());
    let file = file.to_str().unwrap();
    ok(&["create", "-f", file]);
    let got: Value =
        serde_json::from_str(&ok(&["get", "lease", "kms-slot-0", "-o", "json"])).unwrap();
    let mut replaced = lease.clone();
    replaced["metadata"]["resourceVersion"] = got["metadata"]["resourceVersion"].clone();
    replaced["spec"]["holderIdentity"] = "kms-1".into();
    let file = ns.file("lease.json", &replaced.to_string());
    ok(&["replace", "-f", file.to_str().unwrap()]);
    let listed = ok(&[
        "get",
        "leases",
        "-l",
        "memprobe.io/fleet=kms",
        "-o",
        "jsonpath={.items[*].spec.holderIdentity}",
    ]);
    assert_eq!(listed, "kms-1");
    refused(&[
        "annotate",
        "lease",
        "kms-slot-0",
        "memprobe.io/fullness=0.5",
    ]);
    let watch = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases?watch=true",
        ns.name
    );
    refused(&["get", "--raw", &watch]);
    ok(&["delete", "lease", "kms-slot-0"]);

    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "kms-0.test"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "action": "Drain", "reason": "MemoryHigh", "type": "Normal", "note": "a test",
        "reportingController": "memprobe.io/memprobe", "reportingInstance": "kms-0",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "kms-0", "namespace": ns.name},
    });
    let file = ns.file("event.json", &event.to_string());
    ok(&["create", "-f", file.to_str().unwrap()]);
    ok(&["get", "pods"]);

    refused(&["get", "secrets"]);
    refused(&["get", "events.events.k8s.io"]);
    refused(&["get", "leases", "-n", "default"]);
    refused(&["get", "deployments"]);
}
/// The base as the tests run it: the stand-in images (never pulled), memprobe fast and
/// counting the stand-in's sessions at its /stats, a threshold of 100 MiB against a KMS
/// limit of 512 MiB, liveness every 2 s; the rest as shipped.
fn test_overlay(images: &Images, replicas: u32, workload: &[&str], liveness: bool) -> String {
    let mut kms_args = vec!["--serve-sessions", "0.0.0.0:8888", "--session-size", "1MiB"];
    kms_args.extend_from_slice(workload);
    let spec = "/spec/template/spec";
    let ops = json!([
        {"op": "replace", "path": format!("{spec}/initContainers/0/imagePullPolicy"), "value": "Never"},
        {"op": "replace", "path": format!("{spec}/containers/0/imagePullPolicy"), "value": "Never"},
        {"op": "replace", "path": format!("{spec}/initContainers/0/args"), "value": [
            "--name=kurento-media-server",
            "--sessions-url=http://127.0.0.1:8888/stats#/sessions",
            "--sessions-poll=250ms",
            "--interval=250ms",
            "--sustain=1s",
            "--min-drain=2s",
        ]},
        {"op": "add", "path": format!("{spec}/containers/0/args"), "value": kms_args},
        // The workload reads commands on stdin and ends with it.
        {"op": "add", "path": format!("{spec}/containers/0/stdin"), "value": true},
        {"op": "replace", "path": format!("{spec}/containers/0/resources"), "value": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        }},
    ]);
    let mut ops = ops;
    // KMS's liveness asks memprobe (none in observe-only): quick, so a recycle shows soon.
    if liveness {
        let list = ops.as_array_mut().expect("a list of operations");
        list.push(json!({"op": "replace", "path": format!("{spec}/containers/0/livenessProbe/periodSeconds"), "value": 2}));
        list.push(json!({"op": "replace", "path": format!("{spec}/containers/0/livenessProbe/failureThreshold"), "value": 3}));
    }
    let (memprobe_name, memprobe_tag) = images.memprobe.rsplit_once(':').unwrap();
    let (kms_name, kms_tag) = images.kms.rsplit_once(':').unwrap();
    let patch = serde_json::to_string(&ops.to_string()).unwrap();
    // The threshold by its variable's name (a strategic merge): the fleet's component puts
    // variables of its own before it.
    let threshold = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kms"},
        "spec": {"template": {"spec": {"initContainers": [{
            "name": "memprobe",
            "env": [{"name": "MEMPROBE_THRESHOLD", "value": "100MiB"}],
        }]}}},
    });
    let threshold = serde_json::to_string(&threshold.to_string()).unwrap();
    format!(
        "images:\n  - name: memprobe\n    newName: {memprobe_name}\n    newTag: \"{memprobe_tag}\"\n\
         \x20 - name: kurento/kurento-media-server\n    newName: {kms_name}\n    newTag: \"{kms_tag}\"\n\
         replicas:\n  - name: kms\n    count: {replicas}\n\
         patches:\n  - target: {{kind: Deployment, name: kms}}\n    patch: {patch}\n\
         \x20 - patch: {threshold}\n"
    )
}

/// A namespace with the base running in it, `replicas` pods Ready; the admin Secret is made
/// first, so the preStop hook and `memprobe drain` have a token.
fn run_base(
    cluster: &'static Cluster,
    prefix: &str,
    replicas: u32,
    workload: &[&str],
) -> Namespace {
    run_kustomization(cluster, prefix, "base", replicas, workload)
}

/// The Pod Security level a kustomization's pods need: privileged for the host network,
/// baseline for the rest (the official KMS image runs as root).
fn pod_security(kustomization: &str) -> &'static str {
    if kustomization == "overlays/host-network" {
        "privileged"
    } else {
        "baseline"
    }
}

fn run_kustomization(
    cluster: &'static Cluster,
    prefix: &str,
    kustomization: &str,
    replicas: u32,
    workload: &[&str],
) -> Namespace {
    let images = cluster.images();
    let ns = cluster.namespace(
        prefix,
        &[(
            "pod-security.kubernetes.io/enforce",
            pod_security(kustomization),
        )],
    );
    ns.run(&[
        "create",
        "secret",
        "generic",
        "memprobe-admin",
        &format!("--from-literal=token={ADMIN_TOKEN}"),
    ]);
    let started = Instant::now();
    let liveness = kustomization != "overlays/observe-only";
    let applied = ns.apply(
        kustomization,
        &test_overlay(images, replicas, workload, liveness),
    );
    assert!(applied.status.success(), "{}", said(&applied));
    let ready = || {
        let ready = ns.ready_pods().len();
        if ready == replicas as usize {
            Ok(())
        } else {
            Err(format!("{ready} of {replicas} Ready"))
        }
    };
    let start = Instant::now();
    while let Err(why) = ready() {
        assert!(
            start.elapsed() < POD_DEADLINE,
            "the pods are not Ready: {why}\n{}",
            ns.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{}: {replicas} pod(s) Ready {:.1}s after apply",
        ns.name,
        started.elapsed().as_secs_f64()
    );
    ns
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap().to_string()
}

fn ip(pod: &Value) -> String {
    pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string()
}

/// One GET to a pod's port, from the host (the pods' bridge is routed here).
fn get(url: &str) -> Result<Value, String> {
    let reply = request(&agent(), "GET", url).map_err(|e| e.to_string())?;
    serde_json::from_str(&reply.body).map_err(|e| format!("{}: {e}", reply.body))
}

fn pod(ns: &Namespace, pod: &str) -> Result<Value, String> {
    ns.json(&["get", "pod", pod])
}

/// Commands to the stand-in's stdin, through `kubectl attach`, kept open for the test.
struct Attached(Child);

impl Attached {
    fn to(ns: &Namespace, pod: &str) -> Self {
        let child = ns
            .cluster
            .kubectl()
            .args(["-n", &ns.name, "attach", "-i", "-q", pod, "-c", "kms"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl attach");
        Attached(child)
    }

    fn tell(&mut self, command: &str) {
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Service kms's endpoints, as the endpoint-slice controller has them: (address, ready).
fn endpoints(ns: &Namespace) -> Vec<(String, bool)> {
    let Ok(slices) = ns.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kms",
    ]) else {
        return Vec::new();
    };
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap_or_default().to_string(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect()
}

#[test]
fn the_base_turns_ready_through_memprobe_and_a_memory_drain_takes_it_out_of_the_service() {
    let Some(cluster) = cluster() else { return };
    // One session from the start, held for the whole test.
    let ns = run_base(cluster, "drain", 1, &["--waves", "1", "--hold", "1h"]);
    let the_pod = ns.ready_pods().remove(0);
    let (pod_name, pod_ip) = (name(&the_pod), ip(&the_pod));
    let status = format!("http://{pod_ip}:8899/status");
    let stats = format!("http://{pod_ip}:8888/stats");

    let healthy = get(&status).unwrap();
    assert_eq!(healthy["state"], "healthy", "{healthy}");
    let in_service = wait("the pod ready in the EndpointSlice", POD_DEADLINE, || {
        let e = endpoints(&ns);
        if e.contains(&(pod_ip.clone(), true)) {
            Ok(e)
        } else {
            Err(format!("{e:?}"))
        }
    });
    eprintln!("{pod_name}: in service: {in_service:?}");
    wait("the session counted", POD_DEADLINE, || {
        let s = get(&status)?;
        (s["sessions"] == 1).then_some(()).ok_or(s.to_string())
    });

    // 150 MiB more over a 100 MiB threshold, sustained for 1 s: a memory drain.
    let mut stdin = Attached::to(&ns, &pod_name);
    let drained_at = Instant::now();
    stdin.tell("alloc 150MiB");
    let draining = wait("memprobe draining", POD_DEADLINE, || {
        let s = get(&status)?;
        (s["state"] == "draining")
            .then_some(s.clone())
            .ok_or(s.to_string())
    });
    eprintln!(
        "{pod_name}: draining {:.1}s after the alloc: {}",
        drained_at.elapsed().as_secs_f64(),
        draining["reason"]
    );
    wait("the pod NotReady", POD_DEADLINE, || {
        let p = pod(&ns, &pod_name)?;
        (condition(&p, "Ready").as_deref() == Some("False"))
            .then_some(())
            .ok_or(format!("{:?}", p["status"]["conditions"]))
    });
    let out = wait("the pod out of the EndpointSlice", POD_DEADLINE, || {
        let e = endpoints(&ns);
        if e.contains(&(pod_ip.clone(), false)) {
            Ok(e)
        } else {
            Err(format!("{e:?}"))
        }
    });
    eprintln!(
        "{pod_name}: out of service {:.1}s after the alloc: {out:?}",
        drained_at.elapsed().as_secs_f64()
    );

    // The session goes on: the stand-in still runs it, in the same container, and memprobe
    // still counts it and holds the drain open for it.
    let s = get(&stats).unwrap();
    assert_eq!(s["sessions"], 1, "the session goes on: {s}");
    let p = pod(&ns, &pod_name).unwrap();
    let kms = container_status(&p, "kms").unwrap();
    assert_eq!(kms["restartCount"], 0, "KMS was not restarted: {kms}");
    let now = get(&status).unwrap();
    assert_eq!(now["state"], "draining", "{now}");
}

/// The kms container's state as the kubelet reported it.
fn kms_state(ns: &Namespace, pod_name: &str) -> Result<Value, String> {
    let p = pod(ns, pod_name)?;
    container_status(&p, "kms")
        .map(|c| c["state"].clone())
        .ok_or_else(|| "no kms status".to_string())
}

#[test]
fn a_deleted_pod_keeps_its_session_until_it_ends_and_only_then_gets_sigterm() {
    let Some(cluster) = cluster() else { return };
    // Sessions come from stdin; each holds 20 s.
    let ns = run_base(cluster, "delete", 1, &["--waves", "0", "--hold", "20s"]);
    let the_pod = ns.ready_pods().remove(0);
    let (pod_name, pod_ip) = (name(&the_pod), ip(&the_pod));
    let stats = format!("http://{pod_ip}:8888/stats");
    let mut stdin = Attached::to(&ns, &pod_name);
    let (session_asked, session_asked_wall) = (Instant::now(), SystemTime::now());
    stdin.tell("sessions 1");
    wait("the session running", POD_DEADLINE, || {
        let s = get(&stats)?;
        (s["sessions"] == 1).then_some(()).ok_or(s.to_string())
    });

    // The pod is gone moments after its containers end: its last states are watched.
    let watch = Watch::pod(&ns, &pod_name);
    let deleted = Instant::now();
    ns.run(&["delete", "pod", &pod_name, "--wait=false"]);
    // While the session runs the stand-in is never signalled: it keeps answering with its
    // session (SIGTERM would end it: it is not the pod's PID 1). memprobe answers the hook
    // within an --interval of the session's end, so the stand-in is seen alive and idle
    // before its SIGTERM: asked every 50 ms, without kubectl in the way.
    let http = agent();
    let start = Instant::now();
    let (ended, ended_wall) = loop {
        assert!(start.elapsed() < POD_DEADLINE, "the session never ended");
        match request(&http, "GET", &stats).map(|r| r.json()) {
            Ok(s) if s["sessions"] == 0 && s["ended"] == 1 => {
                break (deleted.elapsed(), SystemTime::now());
            }
            Ok(s) => assert_eq!(s["sessions"], 1, "{s}"),
            // Gone between two asks: only after the 20 s the session holds from its start
            // (no earlier than it was asked for) may the session have ended unseen.
            Err(e) => {
                assert!(
                    session_asked.elapsed() >= Duration::from_secs(20),
                    "KMS stopped {:.1}s into its 20 s session: {e}",
                    session_asked.elapsed().as_secs_f64()
                );
                eprintln!("{pod_name}: its end fell between two asks: {e}");
                break (
                    deleted.elapsed(),
                    session_asked_wall + Duration::from_secs(20),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ended_at = utc(ended_wall);
    let terminated = wait("KMS terminated", POD_DEADLINE, || {
        watch
            .terminated()
            .ok_or_else(|| "no terminated state of kms yet".to_string())
    });
    eprintln!(
        "{pod_name}: deleted; session ended {:.1}s later; KMS ended {:.1}s after the delete: \
         {terminated}",
        ended.as_secs_f64(),
        deleted.elapsed().as_secs_f64()
    );
    // SIGTERM, as 128 + 15, and no earlier than the second the session ended in.
    assert_eq!(
        terminated["exitCode"], 143,
        "KMS ended by SIGTERM: {terminated}"
    );
    let finished = terminated["finishedAt"].as_str().unwrap_or_default();
    assert!(
        finished >= ended_at.as_str(),
        "KMS ended at {finished}, before its session ended at {ended_at}"
    );
    let failed = ns
        .json(&["get", "events", "--field-selector=reason=FailedPreStopHook"])
        .unwrap();
    assert_eq!(failed["items"], json!([]), "the preStop hook succeeded");

    // The Deployment's next pod has no session: a delete ends it within seconds.
    let next = wait("the next pod Ready", POD_DEADLINE, || {
        ns.ready_pods()
            .into_iter()
            .find(|p| name(p) != pod_name)
            .ok_or_else(|| "none yet".to_string())
    });
    let next_name = name(&next);
    let deleted = Instant::now();
    ns.run(&["delete", "pod", &next_name, "--wait=false"]);
    // Within seconds, and a minute at most on a loaded machine.
    wait(
        "the idle pod's KMS ended",
        Duration::from_secs(60),
        || match kms_state(&ns, &next_name) {
            Err(gone) if gone.contains("NotFound") => Ok(()),
            Ok(s) if s["terminated"].is_object() => Ok(()),
            Ok(s) => Err(s.to_string()),
            Err(e) => Err(e),
        },
    );
    eprintln!(
        "{next_name}: with no session, KMS ended {:.1}s after the delete",
        deleted.elapsed().as_secs_f64()
    );
}

/// `kubectl get pod -w`: every state of the pod's kms container as the kubelet reports it,
/// kept after the pod is gone.
struct Watch {
    child: Child,
    terminated: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
}

impl Watch {
    fn pod(ns: &Namespace, pod_name: &str) -> Self {
        let mut child = ns
            .cluster
            .kubectl()
            .args(["-n", &ns.name, "get", "pod", pod_name, "-w", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get -w");
        let stdout = child.stdout.take().unwrap();
        let terminated = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = std::sync::Arc::clone(&terminated);
        std::thread::spawn(move || {
            for pod in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(pod) = pod else { return };
                if let Some(kms) = container_status(&pod, "kms")
                    && kms["state"]["terminated"].is_object()
                {
                    *seen.lock().unwrap() = Some(kms["state"]["terminated"].clone());
                }
            }
        });
        // Started before the delete, with the pod's end a session (20 s) away.
        Watch { child, terminated }
    }

    fn terminated(&self) -> Option<Value> {
        self.terminated.lock().unwrap().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A time as the kubelet writes its times (RFC 3339, UTC, whole seconds): a finishedAt of
/// the same second compares equal.
fn utc(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    crate::harness::podman::run(
        std::process::Command::new("date")
            .arg("-u")
            .arg(format!("--date=@{secs}"))
            .arg("+%Y-%m-%dT%H:%M:%SZ"),
    )
}

#[test]
fn a_recycle_fails_kms_liveness_and_the_kubelet_restarts_kms_only() {
    let Some(cluster) = cluster() else { return };
    let ns = run_base(cluster, "recycle", 1, &["--waves", "0"]);
    let the_pod = ns.ready_pods().remove(0);
    let (pod_name, pod_ip) = (name(&the_pod), ip(&the_pod));
    let status = format!("http://{pod_ip}:8899/status");
    let memprobe_before = container_status(&the_pod, "memprobe").unwrap();
    let first = get(&status).unwrap();

    // Over the threshold with no session: drain, then recycle after --min-drain.
    let mut stdin = Attached::to(&ns, &pod_name);
    let asked = Instant::now();
    stdin.tell("alloc 150MiB");
    wait("recycle", POD_DEADLINE, || {
        let s = get(&status)?;
        (s["state"] == "recycle").then_some(()).ok_or(s.to_string())
    });
    let recycled = asked.elapsed();
    let restarted = wait("KMS restarted by the kubelet", POD_DEADLINE, || {
        let p = pod(&ns, &pod_name)?;
        let kms = container_status(&p, "kms").ok_or("no kms status")?;
        (kms["restartCount"].as_u64() >= Some(1))
            .then_some(p.clone())
            .ok_or(kms.to_string())
    });
    let memprobe_after = container_status(&restarted, "memprobe").unwrap();
    assert_eq!(
        memprobe_after["restartCount"], 0,
        "memprobe was not restarted: {memprobe_after}"
    );
    assert_eq!(
        memprobe_after["containerID"], memprobe_before["containerID"],
        "memprobe is the same container"
    );
    let seen = wait(
        "memprobe healthy on the new incarnation",
        POD_DEADLINE,
        || {
            let s = get(&status)?;
            (s["incarnation"].as_u64() > first["incarnation"].as_u64() && s["state"] == "healthy")
                .then_some(s.clone())
                .ok_or(s.to_string())
        },
    );
    wait("the pod Ready again", POD_DEADLINE, || {
        let p = pod(&ns, &pod_name)?;
        pod_ready(&p)
            .then_some(())
            .ok_or(format!("{:?}", p["status"]["conditions"]))
    });
    eprintln!(
        "{pod_name}: recycle {:.1}s after the alloc, KMS restarted and seen as incarnation {} \
         {:.1}s after it",
        recycled.as_secs_f64(),
        seen["incarnation"],
        asked.elapsed().as_secs_f64()
    );
}

/// Asks the Eviction API to evict a pod: kubectl's output, and whether it was refused.
fn evict(ns: &Namespace, pod_name: &str) -> (bool, String) {
    let eviction = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod_name, "namespace": ns.name},
    });
    let file = ns.file(&format!("evict-{pod_name}.json"), &eviction.to_string());
    let out = ns.cluster.output(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{}/pods/{pod_name}/eviction", ns.name),
        "-f",
        file.to_str().unwrap(),
    ]);
    (out.status.success(), said(&out))
}

#[test]
fn an_eviction_that_would_break_the_disruption_budget_is_refused_with_429() {
    let Some(cluster) = cluster() else { return };
    let ns = run_base(cluster, "evict", 2, &["--waves", "0"]);
    wait("the budget allowing one disruption", POD_DEADLINE, || {
        let pdb = ns.json(&["get", "pdb", "kms"])?;
        (pdb["status"]["disruptionsAllowed"] == 1)
            .then_some(())
            .ok_or(pdb["status"].to_string())
    });
    let pods = ns.ready_pods();
    let (drained, other) = (name(&pods[0]), name(&pods[1]));

    // One pod drained on demand (memprobe drain, in its own container): not ready, so the
    // other one is the only ready pod left.
    ns.run(&[
        "exec",
        &drained,
        "-c",
        "memprobe",
        "--",
        "/memprobe",
        "drain",
    ]);
    wait("the budget allowing none", POD_DEADLINE, || {
        let pdb = ns.json(&["get", "pdb", "kms"])?;
        (pdb["status"]["disruptionsAllowed"] == 0)
            .then_some(())
            .ok_or(pdb["status"].to_string())
    });
    let (evicted, said) = evict(&ns, &other);
    assert!(!evicted, "the last ready pod was evicted: {said}");
    assert!(
        said.contains("TooManyRequests") || said.contains("429"),
        "refused with 429: {said}"
    );
    assert!(
        pod(&ns, &other).is_ok_and(|p| p["metadata"]["deletionTimestamp"].is_null()),
        "the pod stays"
    );
    eprintln!("{other}: eviction refused: {}", said.trim());
    // The drained one may go: the budget counts it unavailable already.
    let (evicted, said) = evict(&ns, &drained);
    assert!(evicted, "the drained pod may be evicted: {said}");
}

#[test]
fn the_pss_overlay_reads_kms_pss_as_kms_user_with_no_capability() {
    let Some(cluster) = cluster() else { return };
    // Issue 21: with CAP_SYS_PTRACE added to UID 65532, memprobe exited 1 here and the pod
    // never turned Ready; as KMS's user it needs no capability.
    let ns = run_kustomization(cluster, "pss", "overlays/pss", 1, &["--waves", "0"]);
    let the_pod = ns.ready_pods().remove(0);
    let memprobe = container_status(&the_pod, "memprobe").unwrap();
    assert_eq!(memprobe["restartCount"], 0, "{memprobe}");
    let status = get(&format!("http://{}:8899/status", ip(&the_pod))).unwrap();
    assert_eq!(status["memory"]["deciding"], "pss", "{status}");
    assert!(
        status["memory"]["pss_bytes"].as_u64() > Some(0),
        "{}",
        status["memory"]
    );
    // What the kernel says of memprobe's process: KMS's user, and no capability at all.
    let read_status = || {
        ns.run(&[
            "exec",
            &name(&the_pod),
            "-c",
            "kms",
            "--",
            "/bin/bash",
            "-c",
            // bash builtins only: the stand-in has no cat.
            "for p in /proc/[0-9]*; do read -r comm < $p/comm; [ \"$comm\" = memprobe ] || continue; \
             while IFS= read -r line; do echo \"$line\"; done < $p/status; done",
        ])
    };
    // kubectl exec's stream lost a byte once ("apEff:"): read again until every field is there.
    let wanted = ["Uid:", "CapPrm:", "CapEff:", "CapAmb:"];
    let whole = |text: &str| {
        wanted
            .iter()
            .all(|k| text.lines().any(|l| l.starts_with(k)))
    };
    let mut proc_status = read_status();
    for _ in 0..4 {
        if whole(&proc_status) {
            break;
        }
        eprintln!("an exec's answer came back incomplete, reading again:\n{proc_status}");
        proc_status = read_status();
    }
    let field = |key: &str| {
        proc_status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {proc_status}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "0 0 0 0", "memprobe runs as KMS's user");
    for caps in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), "0000000000000000", "{caps} of memprobe");
    }
    eprintln!(
        "{}: pss {} bytes, read as uid 0 with no capability",
        name(&the_pod),
        status["memory"]["pss_bytes"]
    );
}

#[test]
fn the_host_network_overlay_runs_on_the_nodes_network_and_turns_ready_through_memprobes_port() {
    let Some(cluster) = cluster() else { return };
    // Its port, as the overlay's one setting gives it.
    let port = std::fs::read_to_string(format!(
        "{}/deploy/kubernetes/overlays/host-network/port.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .find_map(|l| l.trim().strip_prefix("port: "))
    .map(|p| p.trim_matches('"').to_string())
    .expect("port.yaml sets the port");
    let ns = run_kustomization(
        cluster,
        "hostnet",
        "overlays/host-network",
        1,
        &["--waves", "1", "--hold", "1h"],
    );
    let the_pod = ns.ready_pods().remove(0);
    let (pod_name, pod_ip) = (name(&the_pod), ip(&the_pod));
    assert_eq!(the_pod["spec"]["hostNetwork"], true, "{the_pod}");
    let node_ip = the_pod["status"]["hostIP"].as_str().unwrap_or_default();
    assert_eq!(pod_ip, node_ip, "a host-network pod has its node's address");
    // Ready through memprobe on the overlay's port, on the node's own address.
    let status = format!("http://{pod_ip}:{port}/status");
    let healthy = get(&status).unwrap();
    assert_eq!(healthy["state"], "healthy", "{healthy}");

    // A memory drain takes it out of rotation: KMS's readiness probe asks that port.
    let mut stdin = Attached::to(&ns, &pod_name);
    stdin.tell("alloc 150MiB");
    wait("memprobe draining", POD_DEADLINE, || {
        let s = get(&status)?;
        (s["state"] == "draining")
            .then_some(())
            .ok_or(s.to_string())
    });
    wait("the pod NotReady", POD_DEADLINE, || {
        let p = pod(&ns, &pod_name)?;
        (condition(&p, "Ready").as_deref() == Some("False"))
            .then_some(())
            .ok_or(format!("{:?}", p["status"]["conditions"]))
    });
    let p = pod(&ns, &pod_name).unwrap();
    let kms = container_status(&p, "kms").unwrap();
    assert_eq!(kms["restartCount"], 0, "its session goes on: {kms}");
}

#[test]
fn the_observe_only_overlay_decides_under_the_kubelet_and_nothing_acts_on_it() {
    let Some(cluster) = cluster() else { return };
    let ns = run_kustomization(
        cluster,
        "observe",
        "overlays/observe-only",
        1,
        &["--waves", "1", "--hold", "1h"],
    );
    let the_pod = ns.ready_pods().remove(0);
    let (pod_name, pod_ip) = (name(&the_pod), ip(&the_pod));
    let status = format!("http://{pod_ip}:8899/status");
    let healthy = get(&status).unwrap();
    assert_eq!(healthy["state"], "healthy", "{healthy}");

    // Memory over the threshold: memprobe drains, as it would, and says so...
    let mut stdin = Attached::to(&ns, &pod_name);
    stdin.tell("alloc 150MiB");
    let draining = wait("memprobe draining", POD_DEADLINE, || {
        let s = get(&status)?;
        (s["state"] == "draining")
            .then_some(s.clone())
            .ok_or(s.to_string())
    });
    eprintln!("{pod_name}: would drain: {}", draining["reason"]);
    // ...and nothing acts on it: KMS's probes ask its own port, so the pod stays Ready for a
    // good while (well past the base's 5 s readiness period), and KMS is not restarted.
    std::thread::sleep(Duration::from_secs(15));
    let p = pod(&ns, &pod_name).unwrap();
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("True"),
        "observe only: the pod stays in rotation: {:?}",
        p["status"]["conditions"]
    );
    let kms = container_status(&p, "kms").unwrap();
    assert_eq!(kms["restartCount"], 0, "{kms}");
    let still = get(&status).unwrap();
    assert_eq!(still["state"], "draining", "memprobe's own view: {still}");
}

/// What the in-cluster client of memprobe-fleet gets in a pod: KUBERNETES_SERVICE_HOST and
/// _PORT, the kubernetes Service's address, which kube-proxy turns into the API server's
/// (tests/kube/README.md). A plain pod connects to it; the fleet's test below makes the
/// calls themselves, TLS and token included.
#[test]
fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let Some(cluster) = cluster() else { return };
    let images = cluster.images();
    let ns = cluster.namespace("service", &[]);
    // bash's /dev/tcp, in the stand-in's image: nothing else to install.
    let reach = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reach"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "reach",
                "image": images.kms,
                "imagePullPolicy": "Never",
                "command": ["/bin/bash", "-c",
                    "echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
                     exec 3<>\"/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT\" \
                     && echo connected"],
            }],
        },
    });
    let file = ns.file("pod.json", &reach.to_string());
    ns.run(&["create", "-f", file.to_str().unwrap()]);
    let phase = wait("the pod ended", POD_DEADLINE, || {
        let p = pod(&ns, "reach")?;
        match p["status"]["phase"].as_str() {
            Some(phase @ ("Succeeded" | "Failed")) => Ok(phase.to_string()),
            other => Err(format!("{other:?}")),
        }
    });
    let logs = ns.run(&["logs", "reach"]);
    assert_eq!(
        (phase.as_str(), logs.trim()),
        ("Succeeded", "10.96.0.1:443\nconnected"),
        "the pod's view of the kubernetes Service:\n{}",
        ns.describe()
    );
}

/// One pod of the fleet as the test drives it: its memprobe's /status from the host, and the
/// stand-in's stdin until the kubelet restarts it.
struct Member {
    name: String,
    status: String,
    stdin: Option<Attached>,
    /// When the test first saw it draining.
    draining_since: Option<Instant>,
    hung_up: bool,
    waited: bool,
}

/// The fleet overlay as users run it, with the images the tests build: three pods of its
/// Deployment, memprobe in each calling the API server from inside its pod (the projected
/// token, KUBERNETES_SERVICE_HOST, the shipped Role) through the kubernetes Service. Every
/// KMS holds a call and goes over the threshold at once: they drain one at a time (the
/// shipped budget, 1), the others waiting with their call on and their pod Ready; each drain
/// ends with its call, and the kubelet restarts that KMS at zero sessions. The slot is a
/// Lease in the namespace, and `kubectl describe pod` shows each pod's Events.
#[test]
fn the_fleet_overlays_pods_drain_in_turn_calling_the_api_server_from_inside_the_pod() {
    let Some(cluster) = cluster() else { return };
    const PODS: usize = 3;
    // Long enough for the others to be seen waiting, as real drains (minutes of calls) are.
    const CALL_AFTER_DRAIN: Duration = Duration::from_secs(5);
    // Three turns of a few fleet ticks (10 s) and a KMS restart each; generous.
    const STORY: Duration = Duration::from_secs(480);
    let ns = run_kustomization(
        cluster,
        "fleet-pods",
        "overlays/fleet",
        PODS as u32,
        &["--waves", "0"],
    );
    let mut fleet: Vec<Member> = ns
        .ready_pods()
        .iter()
        .map(|p| Member {
            name: name(p),
            status: format!("http://{}:8899/status", ip(p)),
            stdin: None,
            draining_since: None,
            hung_up: false,
            waited: false,
        })
        .collect();
    // Each memprobe's start check, made from inside its pod: its own pod and the Leases read
    // with the projected token.
    for member in &fleet {
        let status = wait("the fleet's start check passed", POD_DEADLINE, || {
            let s = get(&member.status)?;
            (s["fleet"]["check"] == "passed")
                .then_some(s.clone())
                .ok_or(s["fleet"].to_string())
        });
        let fleet_status = &status["fleet"];
        assert_eq!(fleet_status["api"], "reachable", "{fleet_status}");
        assert_eq!(fleet_status["pod"], member.name.as_str(), "{fleet_status}");
        assert_eq!(
            fleet_status["namespace"],
            ns.name.as_str(),
            "{fleet_status}"
        );
    }
    for member in &mut fleet {
        let mut stdin = Attached::to(&ns, &member.name);
        stdin.tell("call");
        member.stdin = Some(stdin);
        wait("the call counted", POD_DEADLINE, || {
            let s = get(&member.status)?;
            (s["sessions"] == 1).then_some(()).ok_or(s.to_string())
        });
    }
    let started = Instant::now();
    for member in &mut fleet {
        if let Some(stdin) = member.stdin.as_mut() {
            stdin.tell("alloc 150MiB");
        }
    }

    let restarted = |member: &Member| {
        pod(&ns, &member.name).is_ok_and(|p| {
            container_status(&p, "kms").is_some_and(|kms| kms["restartCount"].as_u64() >= Some(1))
        })
    };
    let mut most_draining = 0;
    loop {
        let mut statuses = Vec::new();
        for member in &mut fleet {
            // A connection refused or cut mid-answer is asked again next round.
            let Ok(s) = get(&member.status) else { continue };
            if s["fleet"]["waiting"] == true {
                assert_eq!(s["state"], "elevated", "{}: {s}", member.name);
                assert_eq!(s["ready"], true, "{} waits in rotation: {s}", member.name);
                assert_eq!(
                    s["sessions"], 1,
                    "{} waits with its call on: {s}",
                    member.name
                );
                member.waited = true;
            }
            if s["state"] == "draining" {
                let since = *member.draining_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= CALL_AFTER_DRAIN
                    && !member.hung_up
                    && let Some(stdin) = member.stdin.as_mut()
                {
                    stdin.tell("hangup");
                    member.hung_up = true;
                }
            }
            statuses.push(s);
        }
        let draining = statuses
            .iter()
            .filter(|s| s["state"] == "draining" || s["state"] == "recycle")
            .count();
        most_draining = most_draining.max(draining);
        // Each answer is a snapshot of its own: a drain seen starting while another is seen
        // still draining cannot be, since a slot is given back only once healthy again.
        assert!(
            draining <= 1,
            "more than the budget of 1 drains at once: {statuses:#?}"
        );
        let done = statuses.len() == PODS
            && statuses
                .iter()
                .all(|s| s["state"] == "healthy" && s["fleet"]["holding"].is_null())
            && fleet.iter().all(&restarted);
        if done {
            break;
        }
        assert!(
            started.elapsed() < STORY,
            "the fleet did not drain in turn within {STORY:?}: {statuses:#?}\n{}",
            ns.describe()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{}: {PODS} drains in turn in {:.1}s; most draining at once {most_draining}",
        ns.name,
        started.elapsed().as_secs_f64()
    );

    // Each drain from its memprobe's own record (one clock: the pods share this host's):
    // one at a time, each ended by its call, its KMS restarted by the kubelet only.
    let mut spans = Vec::new();
    for member in &fleet {
        let status = get(&member.status).unwrap();
        assert_eq!(
            status["fleet"]["fleet"], "kms",
            "the fleet is the pods' Deployment: {}",
            status["fleet"]
        );
        let (start, end) = crate::fleet::drain_span(&status)
            .unwrap_or_else(|| panic!("{} drained: {status:#}", member.name));
        let end = end.unwrap_or_else(|| panic!("{} healthy again: {status:#}", member.name));
        let recycled = status["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["from"] == "draining" && t["to"] == "recycle")
            .unwrap_or_else(|| panic!("{} recycled after its drain: {status:#}", member.name));
        let why = recycled["reason"].as_str().unwrap_or_default();
        assert!(
            why.starts_with("last session ended"),
            "{}: KMS restarted at zero sessions: {why}",
            member.name
        );
        let p = pod(&ns, &member.name).unwrap();
        let kms = container_status(&p, "kms").unwrap();
        let memprobe = container_status(&p, "memprobe").unwrap();
        assert_eq!(kms["restartCount"], 1, "{}: {kms}", member.name);
        assert_eq!(memprobe["restartCount"], 0, "{}: {memprobe}", member.name);
        spans.push((start, end, member.name.clone()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} was still draining (until {}) when {} began ({}): {spans:?}",
            pair[0].2,
            pair[0].1,
            pair[1].2,
            pair[1].0
        );
    }
    let waited = fleet.iter().filter(|m| m.waited).count();
    assert!(
        waited >= PODS - 1,
        "all but the first waited their turn: {waited}"
    );

    // The slot: a Lease of the fleet in the namespace, given back at the end.
    let leases = wait("the slot given back", POD_DEADLINE, || {
        let leases = ns.json(&["get", "leases", "-l", "memprobe.io/fleet=kms"])?;
        let items = leases["items"].as_array().cloned().unwrap_or_default();
        let slots: Vec<&Value> = items
            .iter()
            .filter(|l| {
                l["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("-slot-"))
            })
            .collect();
        let held = slots.iter().any(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .is_some_and(|h| !h.is_empty())
        });
        (!slots.is_empty() && !held)
            .then(|| items.clone())
            .ok_or(format!("{items:?}"))
    });
    eprintln!(
        "{}: leases {:?}",
        ns.name,
        leases
            .iter()
            .map(|l| l["metadata"]["name"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    );

    // What an operator reads in `kubectl describe pod`.
    let mut deferred = 0;
    for member in &fleet {
        let described = wait("the pod's Events in kubectl describe", POD_DEADLINE, || {
            let text = ns.run(&["describe", "pod", &member.name]);
            let events = text.split_once("\nEvents:").map(|(_, e)| e.to_string());
            let events = events.ok_or_else(|| text.clone())?;
            let missing: Vec<&str> = [
                "MemorySustainedHigh",
                "DrainStarted",
                "RecycleRequested",
                "Recovered",
            ]
            .into_iter()
            .filter(|r| !events.contains(r))
            .collect();
            missing
                .is_empty()
                .then(|| events.clone())
                .ok_or(format!("{missing:?} missing from {events}"))
        });
        if described.contains("DrainDeferred") {
            deferred += 1;
        }
        eprintln!("{}:{described}", member.name);
    }
    assert!(
        deferred >= PODS - 1,
        "the waiters said they waited (DrainDeferred): {deferred}"
    );
}
