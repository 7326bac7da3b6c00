//! What ships under deploy/ and the Dockerfiles, checked by the tools the people who run it
//! use: promtool, kubectl kustomize, kubernetes-validate, yamllint, checkov, hadolint and
//! docker-compose. Each skips with a printed reason when its tool is missing, and fails
//! instead under MEMPROBE_STRICT=1.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::tool;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

/// Runs a tool and asserts it succeeds, showing what it said.
fn check(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{cmd:?} failed:\n{said}");
    said
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(path(rel)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = path("deploy/prometheus");
    check(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "rules", "alerts.yml"]),
    );
    check(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "alerts.test.yml"]),
    );
}

#[test]
fn the_prometheus_rule_carries_the_same_rules_as_the_rules_file() {
    let file = yaml("deploy/prometheus/alerts.yml");
    let crd = yaml("deploy/kubernetes/components/monitoring/prometheusrule.yaml");
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"], file,
        "edit deploy/prometheus/alerts.yml and the PrometheusRule together"
    );
}

/// Every rule of the rules file, as (name, rule).
fn alert_rules() -> Vec<(String, Value)> {
    let file = yaml("deploy/prometheus/alerts.yml");
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r)))
        .collect()
}

/// A heading's anchor as GitHub makes it: lowercase, spaces to hyphens, other punctuation gone.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_url_naming_a_heading_of_the_docs() {
    let rules = alert_rules();
    assert!(rules.len() >= 13, "{rules:?}");
    let mut sections = Vec::new();
    for (name, rule) in &rules {
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a runbook_url"));
        let (file, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: {url} names a section (file#anchor)"));
        let text = std::fs::read_to_string(path(file))
            .unwrap_or_else(|e| panic!("{name}: {url}: {file} is not in the repository: {e}"));
        let anchors: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| anchor(l.trim_start_matches('#')))
            .collect();
        assert!(
            anchors.iter().any(|a| a == fragment),
            "{name}: {url}: no heading of {file} has the anchor {fragment} ({anchors:?})"
        );
        sections.push(fragment.to_string());
    }
    // And the runbook has a section for no alert that is gone.
    let runbook = std::fs::read_to_string(path("docs/alerts.md")).unwrap();
    for heading in runbook.lines().filter_map(|l| l.strip_prefix("## ")) {
        assert!(
            sections.contains(&anchor(heading)),
            "docs/alerts.md has a section for {heading}, which no rule links to"
        );
    }
}

#[test]
fn the_service_monitor_names_the_job_the_alerts_look_for() {
    let monitor = yaml("deploy/kubernetes/components/monitoring/servicemonitor.yaml");
    let label = monitor["spec"]["jobLabel"]
        .as_str()
        .expect("the ServiceMonitor names its job from a label of the Service");
    for file in [
        "deploy/kubernetes/base/service.yaml",
        "deploy/kubernetes/janus/service.yaml",
    ] {
        let text = std::fs::read_to_string(path(file)).unwrap();
        let services: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .filter_map(|doc| <Value as serde::Deserialize>::deserialize(doc).ok())
            .filter(|s| s["spec"]["ports"][0]["name"] == "memprobe")
            .collect();
        assert_eq!(services.len(), 1, "{file}: memprobe's Service");
        assert_eq!(
            services[0]["metadata"]["labels"][label], "memprobe",
            "{file}: the job of memprobe's Service is memprobe"
        );
    }
    for name in ["MemprobeDown", "MemprobeNotScraped"] {
        let (_, rule) = alert_rules()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            rule["expr"]
                .as_str()
                .is_some_and(|e| e.contains("up{job=\"memprobe\"}")),
            "{name} looks at the job the ServiceMonitor names: {rule:?}"
        );
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(path("deploy/grafana/memprobe-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel's queries, as (panel title, expression).
fn dashboard_queries() -> Vec<(String, String)> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

/// The metric selectors of a query: each metric's name and what its braces hold.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let name: String = rest[..open]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        found.push((name, rest[open + 1..close].to_string()));
        rest = &rest[(close + 1).min(rest.len())..];
    }
    found
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let exprs: Vec<String> = dashboard_queries()
        .into_iter()
        .map(|(_, e)| e.replace("$namespace", ".*").replace("$pod", ".*"))
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    assert!(!exprs.iter().any(|e| e.contains('$')), "{exprs:?}");
    // promtool parses the expressions of recording rules: one rule per panel query.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("dashboard:query{i}"), "expr": expr}))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), doc.to_string()).unwrap();
    check(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(file.path()),
    );
}

#[test]
fn every_dashboard_query_reads_metrics_memprobe_exports_in_the_chosen_namespace() {
    let exported = include_str!("../../src/outlets/metrics.rs");
    let queries = dashboard_queries();
    for (title, expr) in &queries {
        let selectors = selectors(expr);
        assert!(
            !selectors.is_empty(),
            "{title}: a metric with a selector: {expr}"
        );
        for (metric, matchers) in selectors {
            assert!(
                exported.contains(&format!("\"{metric}\"")),
                "{title}: {metric} is not a metric memprobe exports (src/outlets/metrics.rs): {expr}"
            );
            assert!(
                matchers.contains("namespace=~\"$namespace\""),
                "{title}: {metric} is read in the namespaces chosen: {expr}"
            );
        }
    }
    // The panels docs/kubernetes.md names, and namespace as a variable the pods follow.
    let titles: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for panel in [
        "Forecast",
        "Restarts",
        "Fleet: instances waiting",
        "Fleet: share of instances ready",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(panel)),
            "a panel {panel}: {titles:?}"
        );
    }
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a variable {name}"))
    };
    assert_eq!(variable("namespace")["multi"], true);
    assert!(
        variable("pod")["query"]["query"]
            .as_str()
            .is_some_and(|q| q.contains("namespace=~\"$namespace\"")),
        "the pods offered are those of the namespaces chosen"
    );
}

/// The base, every overlay and the Janus setup, rendered by kustomize.
fn rendered(kubectl: &Path) -> Vec<(String, String)> {
    let mut dirs = vec![
        path("deploy/kubernetes/base"),
        path("deploy/kubernetes/janus"),
    ];
    let overlays = std::fs::read_dir(path("deploy/kubernetes/overlays")).unwrap();
    dirs.extend(overlays.map(|e| e.unwrap().path()));
    dirs.iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            (name, check(Command::new(kubectl).arg("kustomize").arg(dir)))
        })
        .collect()
}

#[test]
fn kubernetes_manifests_render_validate_and_pass_checkov() {
    let (Some(kubectl), Some(validate), Some(checkov)) = (
        tool("kubectl"),
        tool("kubernetes-validate"),
        tool("checkov"),
    ) else {
        return;
    };
    // Not a dot-directory: checkov skips those.
    let out = tempfile::Builder::new()
        .prefix("memprobe-k8s-")
        .tempdir()
        .unwrap();
    for (name, yaml) in rendered(&kubectl) {
        // Native sidecars need 1.29; the pre-1.29 overlay is for older clusters.
        let version = if name == "pre-1.29" { "1.28" } else { "1.34" };
        let file = out.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let said = check(
            Command::new(&validate)
                .args(["--strict", "-k", version])
                .arg(&file),
        );
        let deployment = if name == "janus" { "janus" } else { "kms" };
        assert!(
            said.contains(&format!("passed for resource deployment/{deployment}")),
            "{name}: {said}"
        );
        if name == "pre-1.29" {
            assert!(
                !yaml.contains("initContainers"),
                "memprobe is a plain container: {yaml}"
            );
        }
    }
    let said = check(
        Command::new(&checkov)
            .args([
                "--framework",
                "kubernetes",
                "--compact",
                "--quiet",
                "--skip-download",
                "-d",
            ])
            .arg(out.path()),
    );
    assert!(said.contains("Failed checks: 0"), "{said}");
}

/// The documents kustomize renders from `dir`.
fn documents(kubectl: &Path, dir: &str) -> Vec<Value> {
    let yaml = check(Command::new(kubectl).arg("kustomize").arg(path(dir)));
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .collect()
}

#[test]
fn the_base_the_janus_setup_and_the_fleet_apply_on_a_bare_cluster() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/janus",
        "deploy/kubernetes/overlays/fleet",
    ] {
        only_built_in_kinds(&documents(&kubectl, dir));
    }
}

/// What memprobe calls on the API server with `--fleet kubernetes` and `--events`
/// (src/fleet/kubernetes.rs), in its own namespace: (API group, resource, verbs).
pub(crate) const FLEET_CALLS: &[(&str, &str, &[&str])] = &[
    // Leases: list by the fleet's label; create; replace at the version seen (update); get a
    // wait lease left by the pod's previous memprobe; delete the pod's wait lease.
    (
        "coordination.k8s.io",
        "leases",
        &["get", "list", "create", "update", "delete"],
    ),
    // The decisions, as Events on the pod.
    ("events.k8s.io", "events", &["create"]),
    // Its own pod's metadata (get_metadata), the fleet's pods counted (list_metadata).
    ("", "pods", &["get", "list"]),
];

/// The fleet's pieces as kustomize renders `dir`: its Role's rules as (group, resource,
/// sorted verbs), the ServiceAccount, the RoleBinding and the pod template's spec.
struct Fleet {
    rules: Vec<(String, String, Vec<String>)>,
    account: Value,
    binding: Value,
    role: Value,
    pod: Value,
}

fn fleet(docs: &[Value]) -> Fleet {
    let kind = |kind: &str| -> Value {
        let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}: {found:?}");
        found[0].clone()
    };
    let role = kind("Role");
    let words = |v: &Value| -> Vec<String> {
        let mut all: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect();
        all.sort();
        all
    };
    let mut rules = vec![];
    for rule in role["rules"].as_array().unwrap() {
        assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null());
        for group in words(&rule["apiGroups"]) {
            for resource in words(&rule["resources"]) {
                rules.push((group.clone(), resource, words(&rule["verbs"])));
            }
        }
    }
    rules.sort();
    Fleet {
        rules,
        account: kind("ServiceAccount"),
        binding: kind("RoleBinding"),
        role,
        pod: kind("Deployment")["spec"]["template"]["spec"].clone(),
    }
}

fn expected_fleet_rules() -> Vec<(String, String, Vec<String>)> {
    let mut rules: Vec<_> = FLEET_CALLS
        .iter()
        .map(|(group, resource, verbs)| {
            let mut verbs: Vec<String> = verbs.iter().map(|v| v.to_string()).collect();
            verbs.sort();
            (group.to_string(), resource.to_string(), verbs)
        })
        .collect();
    rules.sort();
    rules
}

/// Every container of a pod spec, init containers first.
fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod[k].as_array())
        .flatten()
        .collect()
}

/// The fleet overlay: a Role of exactly memprobe's calls, bound to the pod's ServiceAccount in
/// the same namespace; the token reaches memprobe's container alone, where an in-cluster
/// client reads it, and the pod still mounts none of its own; memprobe is told the fleet is
/// on and which pod it is, by the Downward API.
#[test]
fn the_fleet_overlay_grants_memprobe_its_calls_and_its_container_alone_the_token() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    let docs = documents(&kubectl, "deploy/kubernetes/overlays/fleet");
    let fleet = fleet(&docs);
    assert_eq!(
        fleet.rules,
        expected_fleet_rules(),
        "the Role allows exactly what memprobe calls"
    );
    let namespace = fleet.role["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(namespace, "media");
    let account = fleet.account["metadata"]["name"].as_str().unwrap();
    assert_eq!(fleet.account["metadata"]["namespace"], namespace);
    assert_eq!(fleet.binding["metadata"]["namespace"], namespace);
    assert_eq!(
        fleet.binding["roleRef"],
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": fleet.role["metadata"]["name"]})
    );
    assert_eq!(
        fleet.binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace}])
    );

    let pod = &fleet.pod;
    assert_eq!(pod["serviceAccountName"], account);
    assert_eq!(
        (
            &pod["automountServiceAccountToken"],
            &fleet.account["automountServiceAccountToken"]
        ),
        (&false.into(), &false.into()),
        "no token in every container"
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| !v["projected"].is_null())
        .expect("a projected volume");
    let sources: Vec<&Value> = volume["projected"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(sources[1]["configMap"]["items"][0]["path"], "ca.crt");
    assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
    for container in containers(pod) {
        let mounts: Vec<&Value> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == volume["name"])
            .collect();
        if container["name"] == "memprobe" {
            assert_eq!(
                mounts[0]["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount",
                "where an in-cluster client reads the token, the CA and the namespace"
            );
            assert_eq!(mounts[0]["readOnly"], true);
        } else {
            assert!(mounts.is_empty(), "{}: no token", container["name"]);
        }
    }

    let memprobe = &pod["initContainers"][0];
    assert_eq!(memprobe["name"], "memprobe");
    let env = memprobe["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        var("MEMPROBE_FLEET").map(|e| e["value"].clone()),
        Some("kubernetes".into())
    );
    for (name, field) in [
        ("MEMPROBE_POD_NAME", "metadata.name"),
        ("MEMPROBE_POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            var(name).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone()),
            Some(field.into()),
            "{name} from the Downward API"
        );
    }

    // The base calls nothing: no account of its own, no token, the fleet off.
    let base = documents(&kubectl, "deploy/kubernetes/base");
    assert!(
        !base
            .iter()
            .any(|d| ["ServiceAccount", "Role", "RoleBinding"]
                .contains(&d["kind"].as_str().unwrap())),
        "the base grants nothing"
    );
    let base_pod =
        &base.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    assert!(base_pod["serviceAccountName"].is_null());
    assert_eq!(base_pod["automountServiceAccountToken"], false);
    for container in containers(base_pod) {
        let text = container.to_string();
        assert!(
            !text.contains("MEMPROBE_FLEET") && !text.contains("serviceaccount"),
            "{text}"
        );
    }
}

/// The line of docs/kubernetes.md that adds the fleet to an overlay of one's own.
fn kubernetes_page_fleet_line() -> &'static str {
    let line = "components: [../../components/fleet]";
    let section = KUBERNETES.replace('\n', " ");
    assert!(
        section.contains(&format!(
            "the component `deploy/kubernetes/components/fleet`, which an overlay of yours on \
             the base, `janus` or any overlay but `pre-1.29` adds with `{line}`"
        )),
        "docs/kubernetes.md says how an overlay adds the fleet"
    );
    line
}

/// The fleet paragraph of docs/kubernetes.md: the overlay is the base with the component, and the RBAC
/// it names is [`FLEET_CALLS`], which the overlay's Role is (the test above).
#[test]
fn the_kubernetes_pages_fleet_paragraph_names_the_overlays_parts_and_the_roles_calls() {
    let overlay = yaml("deploy/kubernetes/overlays/fleet/kustomization.yaml");
    assert_eq!(overlay["resources"], serde_json::json!(["../../base"]));
    assert_eq!(
        overlay["components"],
        serde_json::json!(["../../components/fleet"])
    );
    let section = KUBERNETES.replace('\n', " ");
    assert!(
        section.contains("the `fleet` overlay is the base with the component"),
        "{section}"
    );
    let and = |words: &[&str]| -> String {
        match words.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    };
    let calls: Vec<String> = FLEET_CALLS
        .iter()
        .map(|(group, resource, verbs)| {
            let name = match (*group, *resource) {
                ("coordination.k8s.io", "leases") => "Leases".to_string(),
                ("", "pods") => "Pods".to_string(),
                ("events.k8s.io", "events") => "`events.k8s.io` Events".to_string(),
                other => panic!("name {other:?} in docs/kubernetes.md"),
            };
            format!("{name} {}", and(verbs))
        })
        .collect();
    let rbac = format!(
        "a ServiceAccount `memprobe` and a Role bound to it in the namespace with exactly \
         memprobe's calls: {}.",
        calls.join(", ")
    );
    assert!(
        section.contains(&rbac),
        "docs/kubernetes.md names the Role's calls as: {rbac}"
    );
    // the_fleet_overlay_grants_… checks it.
    assert!(section.contains(
        "The token is mounted in memprobe's container alone; without the fleet, the pods mount none."
    ));
    kubernetes_page_fleet_line();
}

/// The component composes, with the page's line in an overlay of one's own, with the other
/// overlays where memprobe is the native sidecar, and refuses to render on pre-1.29
/// (memprobe a plain container) rather than add an init container with no image.
#[test]
fn the_fleet_component_composes_with_the_other_overlays_and_refuses_pre_1_29() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    // An overlay of one's own beside the shipped ones: overlays/mine, ../../components.
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(path("deploy"), root.path().join("deploy")).unwrap();
    std::os::unix::fs::symlink(
        path("deploy/kubernetes/components"),
        root.path().join("components"),
    )
    .unwrap();
    let dir = root.path().join("overlays/mine");
    std::fs::create_dir_all(&dir).unwrap();
    let line = kubernetes_page_fleet_line();
    let compose = |resource: &str| {
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("resources: [../../deploy/kubernetes/{resource}]\n{line}\n"),
        )
        .unwrap();
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let mut composed = vec!["janus".to_string()];
    for overlay in std::fs::read_dir(path("deploy/kubernetes/overlays")).unwrap() {
        let name = overlay.unwrap().file_name().to_string_lossy().into_owned();
        if !["fleet", "pre-1.29"].contains(&name.as_str()) {
            composed.push(format!("overlays/{name}"));
        }
    }
    for resource in &composed {
        let output = compose(resource);
        let yaml = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{resource} + fleet: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        // An overlay of one's own that names no namespace still puts everything in media,
        // the RoleBinding's subject too: none lands in `default` beside a Deployment in media.
        for doc in docs.iter().filter(|d| d["kind"] != "Namespace") {
            assert_eq!(
                doc["metadata"]["namespace"], "media",
                "{resource} + fleet, in an overlay with no namespace: {} {}",
                doc["kind"], doc["metadata"]["name"]
            );
        }
        for doc in docs.iter().filter(|d| d["kind"] == "RoleBinding") {
            for subject in doc["subjects"].as_array().into_iter().flatten() {
                assert_eq!(
                    subject["namespace"], "media",
                    "{resource} + fleet: {subject}"
                );
            }
        }
        let fleet = fleet(&docs);
        assert_eq!(fleet.rules, expected_fleet_rules(), "{resource} + fleet");
        let memprobe = &fleet.pod["initContainers"][0];
        assert_eq!(memprobe["name"], "memprobe", "{resource} + fleet");
        assert_eq!(
            containers(&fleet.pod).len(),
            2,
            "{resource} + fleet: memprobe and the server, no more"
        );
        assert!(
            crate::harness::plain_env(memprobe)
                .contains(&("MEMPROBE_FLEET".into(), "kubernetes".into())),
            "{resource} + fleet"
        );
        // What the overlay changed stays: jemalloc's image, pss's user, the kms source.
        let alone = documents(&kubectl, &format!("deploy/kubernetes/{resource}"));
        let alone =
            &alone.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
        for (i, container) in containers(alone).iter().enumerate() {
            let with = containers(&fleet.pod)[i];
            for key in ["image", "args", "securityContext"] {
                assert_eq!(with[key], container[key], "{resource} + fleet: {key}");
            }
        }
    }
    // One that names its own namespace moves everything there, the RoleBinding's subject too.
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("namespace: calls\nresources: [../../deploy/kubernetes/base]\n{line}\n"),
    )
    .unwrap();
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    let docs: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&String::from_utf8_lossy(&output.stdout))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    assert!(output.status.success() && !docs.is_empty());
    for doc in &docs {
        let namespace = if doc["kind"] == "Namespace" {
            &doc["metadata"]["name"]
        } else {
            &doc["metadata"]["namespace"]
        };
        assert_eq!(
            namespace, "calls",
            "{} {}",
            doc["kind"], doc["metadata"]["name"]
        );
        for subject in doc["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], "calls", "{subject}");
        }
    }
    let output = compose("overlays/pre-1.29");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && said.contains("initContainers/0/name"),
        "pre-1.29 + fleet is refused, naming why: {said}"
    );
}

fn only_built_in_kinds(docs: &[Value]) {
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["apiVersion"].as_str().unwrap(),
                d["kind"].as_str().unwrap()
            )
        })
        .collect();
    for kind in &kinds {
        // Built-in groups are the core ("v1"), bare names ("apps/v1") and *.k8s.io ones.
        let group = kind.split_once('/').map_or("", |(g, _)| g);
        assert!(
            !group.contains('.') || group.ends_with(".k8s.io"),
            "{kind} needs a CRD: it belongs in components/, not the base"
        );
    }
    assert!(
        kinds.iter().any(|k| k == "v1 Namespace"),
        "it creates its namespace: {kinds:?}"
    );
}

/// memprobe as the Janus manifest runs it — its arguments and environment, rendered by
/// kustomize — watching a real Janus: it finds it, reads its sessions through the admin API
/// with the secret from the file the Secret is mounted as, and judges it healthy.
#[test]
fn the_janus_manifests_memprobe_watches_a_real_janus() {
    use crate::harness::janus::{Janus, SECRET};
    let (Some(kubectl), Some(janus_bin)) = (tool("kubectl"), tool("janus")) else {
        return;
    };
    let docs = documents(&kubectl, "deploy/kubernetes/janus");
    let pod = &docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")["spec"]["template"]["spec"];
    let memprobe = &pod["initContainers"][0];
    let janus_container = &pod["containers"][0];
    assert_eq!(memprobe["name"], "memprobe");
    assert_eq!(janus_container["name"], "janus");
    // The secret file memprobe is told to read is where the Secret is mounted, under the key
    // Janus's entrypoint reads too.
    let mount = memprobe["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let secret_file = format!("{mount}/admin-secret");
    let janus_env = janus_container["env"].as_array().unwrap();
    assert!(
        janus_env
            .iter()
            .any(|e| e["name"] == "JANUS_ADMIN_SECRET_FILE" && e["value"] == secret_file.as_str()),
        "Janus reads the same file: {janus_env:?}"
    );
    assert_eq!(janus_container["volumeMounts"][0]["mountPath"], mount);
    // The preStop drain is KMS's, which drain::deleting_a_pod_… runs for real.
    let kms_docs = documents(&kubectl, "deploy/kubernetes/base");
    let kms = &kms_docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("KMS's Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        janus_container["lifecycle"], kms["lifecycle"],
        "the same preStop hook"
    );
    let hook_env = |c: &Value| {
        let mut env = crate::harness::plain_env(c);
        env.retain(|(name, _)| name.starts_with("MEMPROBE_"));
        env
    };
    assert_eq!(
        hook_env(janus_container),
        hook_env(kms),
        "with the same settings"
    );

    let janus = Janus::start(&janus_bin);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let pidfile = dir.path().join("janus.pid");
    std::fs::write(&pidfile, janus.pid().to_string()).unwrap();
    // The manifest's arguments, with this test's Janus port and secret file in place of the
    // pod's; and a pidfile, since other tests' Janus run on this machine too.
    let admin_url = janus.admin_url();
    let mut args: Vec<String> = memprobe["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("http://127.0.0.1:7088/admin", &admin_url)
                .replace(&secret_file, secret.to_str().unwrap())
        })
        .collect();
    assert!(
        args.iter().any(|a| a.contains(&admin_url)),
        "the admin API on Janus's default port, over the pod's loopback: {args:?}"
    );
    args.extend(["--pidfile".into(), pidfile.to_str().unwrap().into()]);
    // Its environment: the plain values, and the memory limit as the downward API gives it.
    let limit = janus_container["resources"]["limits"]["memory"]
        .as_str()
        .unwrap();
    assert_eq!(limit, "2Gi");
    let mut env = crate::harness::plain_env(memprobe);
    env.push(("MEMPROBE_MEMORY_LIMIT".into(), (2u64 << 30).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let probe = crate::harness::Memprobe::start_with(&args, &env);
    let status = probe.wait_for("Janus found, healthy, with its sessions", |s| {
        s["state"] == "healthy" && s["sessions"] == 0
    });
    assert_eq!(status["janus"]["version"], "1.1.2");
    assert_eq!(status["threshold"]["given"], "80%");
    assert_eq!(status["threshold"]["bytes"], (2u64 << 30) * 8 / 10);
    let session = janus.create().unwrap();
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    janus.destroy(session);
}

#[test]
fn yaml_passes_yamllint() {
    let Some(yamllint) = tool("yamllint") else {
        return;
    };
    check(
        Command::new(yamllint)
            .current_dir(ROOT)
            .args(["-s", "-c", ".yamllint.yml", "deploy"]),
    );
}

#[test]
fn dockerfiles_pass_hadolint() {
    let Some(hadolint) = tool("hadolint") else {
        return;
    };
    for file in [
        "Dockerfile",
        "deploy/kurento-jemalloc/Dockerfile",
        "deploy/janus/Dockerfile",
    ] {
        check(Command::new(&hadolint).arg(path(file)));
    }
}

#[test]
fn the_haproxy_config_is_valid() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let said = check(
        Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(path("deploy/haproxy/haproxy.cfg")),
    );
    assert!(said.contains("Configuration file is valid"), "{said}");
    let text = std::fs::read_to_string(path("deploy/haproxy/haproxy.cfg")).unwrap();
    let config: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let config = config.join("\n");
    assert!(
        config.contains("option httpchk GET /healthz"),
        "restart on /healthz"
    );
    assert!(
        config.contains("agent-check agent-port 8898"),
        "drain through the agent"
    );
    assert!(
        !config.contains("shutdown-sessions"),
        "marking a server down must never cut its calls"
    );
}

#[test]
fn the_systemd_units_verify_and_the_service_is_hardened() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    // The units as shipped, with memprobe where this build has it: verify checks that every
    // command exists. A stub stands in for Kurento's own unit, which the drop-in extends.
    let dir = tempfile::tempdir().unwrap();
    let install = |from: &str, to: &str| {
        let text = std::fs::read_to_string(path(from)).unwrap();
        let text = text.replace("/usr/local/bin/memprobe", crate::harness::MEMPROBE);
        let to = dir.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, text).unwrap();
    };
    install("deploy/systemd/memprobe.service", "memprobe.service");
    install(
        "deploy/systemd/kurento-media-server.service.d/memprobe-drain.conf",
        "kurento-media-server.service.d/memprobe-drain.conf",
    );
    std::fs::write(
        dir.path().join("kurento-media-server.service"),
        "[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    check(Command::new(&analyze).current_dir(dir.path()).args([
        "verify",
        "memprobe.service",
        "kurento-media-server.service",
    ]));
    let said = check(Command::new(&analyze).current_dir(dir.path()).args([
        "security",
        "--offline=true",
        "memprobe.service",
    ]));
    let exposure: f64 = said
        .lines()
        .find_map(|l| l.split("memprobe.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(
        exposure <= 2.0,
        "docs/systemd.md reports 1.6 (OK); now {exposure}:\n{said}"
    );
}

#[test]
fn the_compose_file_is_valid() {
    let Some(compose) = tool("docker-compose") else {
        return;
    };
    for file in [
        "deploy/compose/docker-compose.yml",
        "deploy/compose/docker-compose.janus.yml",
    ] {
        check(
            Command::new(&compose)
                .arg("-f")
                .arg(path(file))
                .args(["config", "-q"]),
        );
    }
}

// The deploy pages of docs/, as a newcomer follows them top to bottom.

const KUBERNETES: &str = include_str!("../../docs/kubernetes.md");
const COMPOSE: &str = include_str!("../../docs/compose.md");
const SYSTEMD: &str = include_str!("../../docs/systemd.md");

/// The lines of a section's indented code blocks, trimmed.
fn commands(section: &str) -> Vec<&str> {
    section
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(str::trim)
        .collect()
}

/// Where in `lines` the first one containing `what` is.
fn line_of(lines: &[&str], what: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no step says '{what}': {lines:#?}"))
}

#[test]
fn the_kubernetes_quickstart_is_one_ordered_list_that_applies_one_overlay() {
    let section = KUBERNETES;
    let steps: Vec<&str> = section
        .lines()
        .filter(|l| l.len() > 2 && l.as_bytes()[0].is_ascii_digit() && &l[1..3] == ". ")
        .collect();
    let numbers: Vec<u8> = steps.iter().map(|l| l.as_bytes()[0] - b'0').collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6], "one numbered list: {steps:#?}");

    // Build, load or push, namespace, Secret, apply: in that order.
    let lines = commands(section);
    let order = [
        "docker build -t memprobe:0.1.0 .",
        "kind load docker-image memprobe:0.1.0",
        "kubectl apply -f deploy/kubernetes/base/namespace.yaml",
        "create secret generic memprobe-admin",
        "kubectl apply -k deploy/kubernetes/base",
        "rollout status deployment/kms",
    ];
    let at: Vec<usize> = order.iter().map(|what| line_of(&lines, what)).collect();
    assert!(
        at.is_sorted(),
        "the steps in the order they work: {order:?} at {at:?}"
    );
    let applies: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("kubectl apply -k deploy/"))
        .collect();
    assert_eq!(
        applies.len(),
        1,
        "one overlay applied, not a sequence: {applies:?}"
    );
    for (document, text) in crate::docs::documents() {
        assert!(
            !text.contains("kustomize edit"),
            "{document}: no step edits the checked-in base"
        );
    }

    // The namespace step creates the namespace the Secret goes to, the one the base uses.
    let namespace = yaml("deploy/kubernetes/base/namespace.yaml");
    assert_eq!(namespace["kind"], "Namespace");
    let name = namespace["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        yaml("deploy/kubernetes/base/kustomization.yaml")["namespace"],
        name
    );
    let secret = lines[line_of(&lines, "create secret generic memprobe-admin")];
    assert!(
        secret.starts_with(&format!("kubectl -n {name} create")),
        "{secret}"
    );

    // The Secret's name and key are the ones the pods read, as an environment variable: the
    // page says a Secret made later needs a restart, and names the Deployment to restart.
    let deployment = yaml("deploy/kubernetes/base/deployment.yaml");
    assert_eq!(deployment["metadata"]["name"], "kms");
    let spec = &deployment["spec"]["template"]["spec"];
    let containers = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap());
    for container in containers {
        let token = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "MEMPROBE_ADMIN_TOKEN")
            .unwrap_or_else(|| panic!("{} reads the token", container["name"]));
        let from = &token["valueFrom"]["secretKeyRef"];
        assert_eq!(
            (&from["name"], &from["key"]),
            (&"memprobe-admin".into(), &"token".into())
        );
        assert!(secret.contains("--from-literal=token="), "{secret}");
    }
    assert!(
        section.contains("kubectl -n media rollout restart deployment/kms"),
        "a Secret created after the pods started needs their restart, and the page says so"
    );

    // Every overlay is in the table of alternatives, and everything in it exists.
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `deploy/kubernetes/"))
        .filter_map(|l| l.split_once('`').map(|(dir, _)| dir))
        .collect();
    for dir in &listed {
        assert!(
            path(&format!("deploy/kubernetes/{dir}/kustomization.yaml")).is_file(),
            "{dir} is listed but is not a kustomization"
        );
    }
    for overlay in std::fs::read_dir(path("deploy/kubernetes/overlays")).unwrap() {
        let name = overlay.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            listed.contains(&format!("overlays/{name}").as_str()),
            "overlay {name} is missing from the table of docs/kubernetes.md: {listed:?}"
        );
    }
}

/// The page's own kustomization (step 5, with a registry), rendered as written: it names
/// the images in the registry, on the base and on the jemalloc overlay, and needs no edit of
/// a checked-in file.
#[test]
fn the_kubernetes_pages_registry_kustomization_renders_with_the_registrys_images() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    let section = KUBERNETES;
    let opening = "cat > my-kms/kustomization.yaml <<EOF\n";
    let heredoc = section
        .split_once(opening)
        .and_then(|(_, rest)| rest.split_once("EOF\n"))
        .map(|(body, _)| body)
        .expect("docs/kubernetes.md writes my-kms/kustomization.yaml");
    let registry = "registry.example.com/media";
    let written: String = heredoc
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("       ").unwrap_or(l)))
        .collect::<String>()
        .replace("$REGISTRY", registry);
    let jemalloc_line = section
        .split_once("add `- { name: kurento-media-server")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(rest, _)| format!("  - {{ name: kurento-media-server{rest}\n"))
        .expect("docs/kubernetes.md says how to name the jemalloc image")
        .replace("$REGISTRY", registry);

    // my-kms beside deploy/, as at the repository's root.
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(path("deploy"), root.path().join("deploy")).unwrap();
    let dir = root.path().join("my-kms");
    std::fs::create_dir(&dir).unwrap();
    let image_of = |kustomization: &str, container: &str| -> String {
        std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
        let yaml = check(Command::new(&kubectl).arg("kustomize").arg(&dir));
        let deployment: Value = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .find(|d: &Value| d["kind"] == "Deployment")
            .expect("a Deployment");
        let spec = &deployment["spec"]["template"]["spec"];
        let all: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten()
            .collect();
        let found = all.iter().find(|c| c["name"] == container).unwrap();
        found["image"].as_str().unwrap().to_string()
    };
    assert_eq!(
        image_of(&written, "memprobe"),
        format!("{registry}/memprobe:0.1.0")
    );
    let jemalloc = format!("{written}{jemalloc_line}").replace(
        "../deploy/kubernetes/base",
        "../deploy/kubernetes/overlays/jemalloc",
    );
    assert_eq!(
        image_of(&jemalloc, "kms"),
        format!("{registry}/kurento-media-server:7.3.0-jemalloc"),
        "the jemalloc image docs/kubernetes.md builds and pushes, from the registry"
    );
    assert_eq!(
        image_of(&jemalloc, "memprobe"),
        format!("{registry}/memprobe:0.1.0")
    );
}

/// The jemalloc overlay's image: docs/kubernetes.md builds and pushes the tag the overlay names, for
/// both architectures, and the image preloads the library by a path every architecture has.
#[test]
fn the_jemalloc_image_is_built_as_the_overlay_names_it_for_both_architectures() {
    let overlay = yaml("deploy/kubernetes/overlays/jemalloc/kustomization.yaml");
    let image = &overlay["images"][0];
    let tag = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    assert_eq!(tag, "kurento-media-server:7.3.0-jemalloc");
    let kubernetes = commands(KUBERNETES).join("\n");
    for wanted in [
        format!("docker build -t {tag} deploy/kurento-jemalloc"),
        format!(
            "--platform linux/amd64,linux/arm64 \\\n-t $REGISTRY/{tag} --push deploy/kurento-jemalloc"
        ),
    ] {
        assert!(
            kubernetes.contains(&wanted),
            "docs/kubernetes.md runs {wanted:?}:\n{kubernetes}"
        );
    }

    let dockerfile = std::fs::read_to_string(path("deploy/kurento-jemalloc/Dockerfile")).unwrap();
    let entrypoint =
        std::fs::read_to_string(path("deploy/kurento-jemalloc/jemalloc-entrypoint.sh")).unwrap();
    let code = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (file, text) in [("Dockerfile", &dockerfile), ("entrypoint", &entrypoint)] {
        assert!(
            !code(text).contains("x86_64") && !code(text).contains("aarch64"),
            "{file} names one architecture's library path"
        );
    }
    let link = code(&dockerfile)
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& ln -s ").map(str::to_owned))
        .expect("the Dockerfile links the library");
    let mut words = link.split_whitespace();
    let (from, to) = (words.next().unwrap(), words.next().unwrap());
    assert_eq!(from, "/usr/lib/*-linux-gnu/libjemalloc.so.2");
    assert!(
        entrypoint.contains(&format!("JEMALLOC={to}\n")),
        "the entrypoint preloads the link: {entrypoint}"
    );

    // The Dockerfile's own line, run on this machine's Debian libjemalloc2.
    let here = Path::new("/usr/lib")
        .read_dir()
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
        .any(|e| e.path().join("libjemalloc.so.2").is_file());
    if !here {
        assert!(
            !crate::harness::strict(),
            "libjemalloc2 is required in strict mode"
        );
        return crate::harness::skip("libjemalloc2 is not installed: the link is not tried");
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("libjemalloc.so.2");
    check(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ln -s {from} {0} && test -f {0}", target.display())),
    );
}

#[test]
fn the_compose_files_let_webrtc_media_in_and_the_secret_step_writes_where_compose_reads() {
    for (file, media) in [
        ("deploy/compose/docker-compose.yml", "kms"),
        ("deploy/compose/docker-compose.janus.yml", "janus"),
    ] {
        let compose = yaml(file);
        let services = &compose["services"];
        assert_eq!(
            services[media]["network_mode"], "host",
            "{file}: WebRTC media (UDP, ports picked per call) reaches {media} on the host's network"
        );
        assert!(
            services[media]["ports"].is_null(),
            "{file}: nothing to publish"
        );
        assert_eq!(
            services["memprobe"]["network_mode"], "host",
            "{file}: memprobe reaches {media} on 127.0.0.1"
        );
        assert_eq!(services["memprobe"]["pid"], format!("service:{media}"));
    }

    // The secret: compose reads ./janus-admin-secret beside its file; docs/compose.md's step and
    // the file's own header write exactly there, and git ignores it.
    let janus = yaml("deploy/compose/docker-compose.janus.yml");
    let file = janus["secrets"]["janus_admin_secret"]["file"]
        .as_str()
        .unwrap();
    let secret = Path::new("deploy/compose").join(file.trim_start_matches("./"));
    let secret = secret.to_str().unwrap();
    assert_eq!(secret, "deploy/compose/janus-admin-secret");
    let written = format!("openssl rand -hex 16 > {secret}");
    assert!(commands(COMPOSE).contains(&written.as_str()));
    let header = std::fs::read_to_string(path("deploy/compose/docker-compose.janus.yml")).unwrap();
    assert!(header.contains(&format!("#   {written}\n")), "{header}");
    let ignored = std::fs::read_to_string(path(".gitignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l == format!("/{secret}")),
        "{ignored}"
    );
    if let Some(compose) = tool("docker-compose") {
        let config = check(
            Command::new(compose)
                .arg("-f")
                .arg(path("deploy/compose/docker-compose.janus.yml"))
                .arg("config"),
        );
        assert!(
            config.contains(&format!("file: {}", path(secret).display())),
            "docker-compose resolves the secret to where the step writes it:\n{config}"
        );
    }

    // Janus's admin API on the loopback only, now that the host's network is Janus's: the
    // image's sed lines match the lines of Debian's own file.
    let dockerfile = std::fs::read_to_string(path("deploy/janus/Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"-e 's/#admin_ip = "192.168.0.1"/admin_ip = "127.0.0.1"/'"#));
    let debian = Path::new("/etc/janus/janus.transport.http.jcfg");
    if debian.is_file() {
        let shipped = std::fs::read_to_string(debian).unwrap();
        for line in ["admin_http = false", "#admin_ip = \"192.168.0.1\""] {
            assert!(
                shipped.contains(line),
                "Debian's janus.transport.http.jcfg has {line}"
            );
        }
    } else {
        assert!(
            !crate::harness::strict(),
            "janus is required in strict mode"
        );
        crate::harness::skip("janus is not installed: its http transport's file is not checked");
    }
}

/// The systemd steps install the binary their own build step makes, at the path the units
/// run, and that build is the one `.ci/run` makes (and the image ships).
#[test]
fn the_systemd_steps_install_the_binary_their_build_step_makes() {
    let lines = commands(SYSTEMD);
    let build = lines[line_of(&lines, "cargo build --release")];
    let target = build
        .split_once("--target ")
        .map(|(_, t)| t.split_whitespace().next().unwrap())
        .expect("the build names its target");
    let install = lines[line_of(&lines, "install -m 0755 ")];
    let words: Vec<&str> = install.split_whitespace().collect();
    assert_eq!(
        words[3..],
        [
            format!("target/{target}/release/memprobe").as_str(),
            "/usr/local/bin/memprobe"
        ],
        "the file the build step writes: {install}"
    );
    assert!(line_of(&lines, "cargo build") < line_of(&lines, "install -m 0755 "));
    assert!(line_of(&lines, "install -m 0755 ") < line_of(&lines, "systemctl enable --now"));
    assert!(
        crate::harness::SHIPPED.ends_with(&format!("/target/{target}/release/memprobe")),
        "the static binary .ci/run builds and the tests run"
    );
    let unit = std::fs::read_to_string(path("deploy/systemd/memprobe.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/memprobe "),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("#   {install}\n")),
        "the unit's own header: {unit}"
    );
    let drop_in = std::fs::read_to_string(path(
        "deploy/systemd/kurento-media-server.service.d/memprobe-drain.conf",
    ))
    .unwrap();
    assert!(
        drop_in.contains("+/usr/local/bin/memprobe drain "),
        "{drop_in}"
    );
    if let Some(shipped) = crate::harness::shipped() {
        let out = check(Command::new(shipped).arg("--version"));
        assert!(out.starts_with("memprobe "), "{out}");
    }
}

/// The jemalloc image and overlay set the `MALLOC_CONF` the clean series on a real KMS 7.3
/// measured best (`background_thread:true`: 65 MiB 60 s after the last release, against
/// 90–135 MiB unset), and the README's table gives that figure and says where it comes from;
/// the earlier 524 vs 77 MiB, from runs where KMS's pool may have deadlocked, is quoted
/// nowhere.
#[test]
fn the_jemalloc_image_and_overlay_set_the_malloc_conf_measured_on_a_real_kms() {
    const MEASURED: &str = "background_thread:true";
    let dockerfile = std::fs::read_to_string(path("deploy/kurento-jemalloc/Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("ENV MALLOC_CONF={MEASURED}")),
        "the image's default: {dockerfile}"
    );
    let overlay = yaml("deploy/kubernetes/overlays/jemalloc/kustomization.yaml");
    let patch = overlay["patches"][0]["patch"].as_str().unwrap();
    let ops: Value = serde_yaml_ng::from_str(patch).unwrap();
    let env = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["value"]["name"] == "MALLOC_CONF")
        .expect("the overlay sets MALLOC_CONF");
    assert_eq!(env["value"]["value"], MEASURED);
    let readme = std::fs::read_to_string(path("deploy/kurento-jemalloc/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| **jemalloc, `{MEASURED}`**")))
        .expect("the table's row for the default");
    assert!(row.contains("**65**"), "{row}");
    assert!(
        readme.contains("the memprobe project measured on a real\nKMS 7.3.1"),
        "the README says where its figures come from"
    );
    let documents = crate::docs::documents().into_iter().map(|(file, _)| file);
    for file in documents.chain(
        [
            "BENCHMARKS.md",
            "deploy/kurento-jemalloc/README.md",
            "deploy/kurento-jemalloc/Dockerfile",
            "deploy/kubernetes/overlays/jemalloc/kustomization.yaml",
        ]
        .map(String::from),
    ) {
        let text = std::fs::read_to_string(path(&file)).unwrap();
        // "77 MiB" as a figure of its own, not the end of another ("2.77 MiB").
        let quoted = |figure: &str| {
            text.match_indices(figure).any(|(at, _)| {
                !text[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_digit() || c == '.')
            })
        };
        assert!(
            !quoted("524 MiB") && !quoted("77 MiB"),
            "{file} quotes the figure from runs whose KMS may have deadlocked"
        );
    }
}

/// Every yaml file under `dir`, recursively.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// The `MEMPROBE_*` names set on a memprobe container (or compose service) in `value`.
fn memprobe_env(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some("memprobe")
                && let Some(env) = map.get("env").and_then(Value::as_array)
            {
                out.extend(
                    env.iter()
                        .filter_map(|e| e["name"].as_str())
                        .filter(|n| n.starts_with("MEMPROBE_"))
                        .map(str::to_owned),
                );
            }
            if let Some(env) = map
                .get("memprobe")
                .and_then(|s| s.get("environment"))
                .and_then(Value::as_object)
            {
                out.extend(env.keys().filter(|n| n.starts_with("MEMPROBE_")).cloned());
            }
            for v in map.values() {
                memprobe_env(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| memprobe_env(v, out)),
        _ => {}
    }
}

/// memprobe warns at start of a `MEMPROBE_*` variable no flag reads: none of the shipped
/// manifests sets one on memprobe.
#[test]
fn the_shipped_manifests_set_memprobe_no_variable_it_would_warn_of() {
    let help = crate::harness::run_to_end(&["--help"], &[]);
    let known: Vec<String> = String::from_utf8_lossy(&help.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("MEMPROBE_"))
        .map(str::to_owned)
        .collect();
    assert!(
        known.len() > 40,
        "--help names each flag's variable: {known:?}"
    );
    let mut files = Vec::new();
    yaml_files(&path("deploy"), &mut files);
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut set = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(doc) = <Value as serde::Deserialize>::deserialize(doc) else {
                continue;
            };
            memprobe_env(&doc, &mut set);
        }
        checked += set.len();
        for name in set {
            assert!(
                known.contains(&name),
                "{}: memprobe is given {name}, which no flag reads",
                file.display()
            );
        }
    }
    assert!(checked > 10, "only {checked} variables found on memprobe");
}
