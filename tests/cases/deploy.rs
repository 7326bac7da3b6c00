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

#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let text = std::fs::read_to_string(path("deploy/grafana/memprobe-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$pod", ".*")))
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
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
fn the_base_and_the_janus_setup_apply_on_a_bare_cluster() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    for dir in ["deploy/kubernetes/base", "deploy/kubernetes/janus"] {
        only_built_in_kinds(&documents(&kubectl, dir));
    }
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
        "the README reports 1.6 (OK); now {exposure}:\n{said}"
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
