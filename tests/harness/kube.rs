//! The one-node Kubernetes of tests/kube, as the kube tests use it: found through
//! `MEMPROBE_KUBECONFIG` (what `tests/kube/up` prints), driven with the kubectl built beside
//! it, one namespace per test (removed on drop, so tests run in parallel), and the images the
//! pods run built once per test run by podman and imported into the cluster's containerd.
//!
//! Without `MEMPROBE_KUBECONFIG` every kube test skips with a printed reason, and fails under
//! MEMPROBE_STRICT=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::podman::{build_memprobe_image, podman, run};
use super::{shipped, skip, strict, tool, unique_name};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// kubectl of the cluster's own release, as tests/kube/build makes it.
const KUBECTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/kube/bin/kubectl");

/// Waits on a pod are long: images import, the kubelet's probes run every few seconds, and
/// the machine is shared.
pub const POD_DEADLINE: Duration = Duration::from_secs(180);

pub struct Cluster {
    kubeconfig: PathBuf,
    /// containerd's socket, where images are imported.
    containerd: PathBuf,
    images: OnceLock<Images>,
}

/// The images every kube test's pods run, imported into the cluster's containerd.
pub struct Images {
    /// memprobe's image, from the shipped static binary.
    pub memprobe: String,
    /// A stand-in for KMS: the shipped binary as `/kurento-media-server` (run as
    /// `kurento-media-server workload`), and bash and sleep for KMS's preStop hook.
    pub kms: String,
}

/// The cluster named by `MEMPROBE_KUBECONFIG`, or `None` (with a printed reason) when it is
/// not set and strict mode is off.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    let found = CLUSTER.get_or_init(|| {
        let kubeconfig = std::env::var_os("MEMPROBE_KUBECONFIG").filter(|v| !v.is_empty())?;
        let kubeconfig = PathBuf::from(kubeconfig);
        let state = kubeconfig.parent().unwrap_or(Path::new("/")).to_path_buf();
        Some(Cluster {
            kubeconfig,
            containerd: state.join("containerd/containerd.sock"),
            images: OnceLock::new(),
        })
    });
    let Some(cluster) = found.as_ref() else {
        let why = "MEMPROBE_KUBECONFIG is not set (run sudo tests/kube/up, then \
                   MEMPROBE_KUBECONFIG=<the path it prints> cargo test --test sidecar kube)";
        assert!(!strict(), "{why}: required in strict mode");
        skip(&format!("{why}; MEMPROBE_STRICT=1 makes this fail"));
        return None;
    };
    assert!(
        Path::new(KUBECTL).is_file(),
        "{KUBECTL} is missing: tests/kube/up builds it"
    );
    // Asked once per run: a cluster named but gone (after tests/kube/down) says so plainly.
    static ANSWERS: OnceLock<Result<(), String>> = OnceLock::new();
    let answers = ANSWERS.get_or_init(|| {
        let readyz = cluster.output(&["get", "--raw", "/readyz"]);
        match String::from_utf8_lossy(&readyz.stdout).trim() {
            "ok" => Ok(()),
            _ => Err(said(&readyz)),
        }
    });
    if let Err(why) = answers {
        panic!(
            "MEMPROBE_KUBECONFIG={} names no cluster that answers (is tests/kube/up's cluster \
             still up?): {why}",
            cluster.kubeconfig.display()
        );
    }
    Some(cluster)
}

/// kubectl of the cluster's release with this kubeconfig, such as a
/// [`Cluster::service_account_kubeconfig`].
pub fn kubectl_with(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(KUBECTL);
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// What a command said on stdout and stderr, for messages.
pub fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `check` gives a value, up to `deadline`; `what` and the last `Err` name what
/// was missing.
pub fn wait<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                start.elapsed() < deadline,
                "no {what} within {deadline:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Cluster {
    /// The admin's kubeconfig (client certificates), as tests/kube/up wrote it.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// kubectl on this cluster.
    pub fn kubectl(&self) -> Command {
        kubectl_with(&self.kubeconfig)
    }

    /// kubectl with these arguments, which must succeed: its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run(self.kubectl().args(args))
    }

    /// kubectl with these arguments, succeeding or not.
    pub fn output(&self, args: &[&str]) -> Output {
        let mut cmd = self.kubectl();
        cmd.args(args);
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    /// `kubectl get ... -o json`.
    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let output = self.output(&[args, &["-o", "json"]].concat());
        if !output.status.success() {
            return Err(said(&output));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    }

    /// A fresh namespace with these labels, removed with all in it on drop.
    pub fn namespace(&'static self, prefix: &str, labels: &[(&str, &str)]) -> Namespace {
        let name = unique_name(&format!("mp-{prefix}"));
        self.run(&["create", "namespace", &name]);
        if !labels.is_empty() {
            let mut args = vec!["label".to_string(), "namespace".to_string(), name.clone()];
            args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
            self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        // Until the service-account controller has made `default`, every pod is refused.
        wait("default service account", POD_DEADLINE, || {
            self.json(&["get", "serviceaccount", "default", "-n", &name])
                .map(drop)
        });
        let dir = Path::new(ROOT).join("target/kube/tests").join(&name);
        std::fs::create_dir_all(&dir).expect("a kustomization dir under target/kube/tests");
        Namespace {
            cluster: self,
            name,
            dir,
        }
    }

    /// A kubeconfig that is `service_account` of `namespace`: this cluster's server and CA,
    /// with a token of an hour from `kubectl create token`, and `namespace` as its default.
    /// A memprobe run on the host as that account (tests/cases/fleet.rs) takes this as its
    /// KUBECONFIG. The file is under the namespace's dir
    /// (removed with a [`Namespace`]), readable by its owner only: it holds the token.
    pub fn service_account_kubeconfig(&self, namespace: &str, service_account: &str) -> PathBuf {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;

        // --flatten puts the CA's bytes in, wherever the admin kubeconfig points to them.
        let admin = self
            .json(&["config", "view", "--raw", "--minify", "--flatten"])
            .unwrap_or_else(|e| panic!("the admin kubeconfig: {e}"));
        let cluster = &admin["clusters"][0]["cluster"];
        let (Some(server), Some(ca)) = (
            cluster["server"].as_str(),
            cluster["certificate-authority-data"].as_str(),
        ) else {
            panic!("no server and CA in the admin kubeconfig: {admin}");
        };
        let token = self.run(&[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration",
            "1h",
        ]);
        let user = format!("system:serviceaccount:{namespace}:{service_account}");
        // A kubeconfig may be JSON: every client that reads YAML reads it.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "memprobe-kube", "cluster": {
                "server": server, "certificate-authority-data": ca,
            }}],
            "users": [{"name": user, "user": {"token": token.trim()}}],
            "contexts": [{"name": user, "context": {
                "cluster": "memprobe-kube", "user": user, "namespace": namespace,
            }}],
            "current-context": user,
        });
        let dir = Path::new(ROOT).join("target/kube/tests").join(namespace);
        std::fs::create_dir_all(&dir).expect("a dir under target/kube/tests");
        let path = dir.join(format!("{service_account}.kubeconfig"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        file.write_all(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// The images, built and imported at the first call of the run.
    pub fn images(&self) -> &Images {
        self.images.get_or_init(|| self.build_images())
    }

    fn build_images(&self) -> Images {
        let bin = tool("podman").expect("podman builds the kube tests' images");
        let binary = shipped().expect("the shipped static binary, for the kube tests' images");
        let tag = std::process::id().to_string();
        let images = Images {
            memprobe: format!("localhost/memprobe-kube:{tag}"),
            kms: format!("localhost/memprobe-kube-kms:{tag}"),
        };
        build_memprobe_image(&bin, &binary, &images.memprobe);

        // The stand-in: memprobe's own workload under KMS's name, with bash (and sleep) at the
        // paths the hook names, their libraries beside them as ldd lists them.
        let context = tempfile::tempdir().expect("a build context");
        let rootfs = context.path().join("rootfs");
        let put = |from: &Path, to: &Path| {
            let to = rootfs.join(to.strip_prefix("/").unwrap_or(to));
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir in rootfs");
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {from:?}: {e}"));
        };
        put(&binary, Path::new("/kurento-media-server"));
        for program in ["/bin/bash", "/bin/sleep"] {
            put(Path::new(program), Path::new(program));
            let libs = run(Command::new("ldd").arg(program));
            for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
                put(Path::new(lib), Path::new(lib));
            }
        }
        std::fs::write(
            context.path().join("Containerfile"),
            "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/kurento-media-server\", \"workload\"]\n",
        )
        .expect("write the Containerfile");
        run(podman(&bin)
            .args(["build", "-q", "-t", &images.kms])
            .arg(context.path()));

        for image in [&images.memprobe, &images.kms] {
            let archive = context.path().join("image.oci.tar");
            run(podman(&bin)
                .args(["save", "-q", "--format", "oci-archive", "-o"])
                .arg(&archive)
                .arg(image));
            run(Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive));
            std::fs::remove_file(&archive).expect("remove the archive");
            let _ = podman(&bin).args(["rmi", "-f", image]).output();
        }
        images
    }
}

/// A namespace of one test's own, with a kustomization dir of its own under
/// target/kube/tests (kustomize takes only relative paths to what it builds on).
pub struct Namespace {
    pub cluster: &'static Cluster,
    pub name: String,
    dir: PathBuf,
}

impl Namespace {
    /// Applies, server-side, `deploy/kubernetes/<base>` in this namespace with `extra`
    /// kustomization lines (patches, images, replicas); kubectl's output.
    pub fn apply(&self, base: &str, extra: &str) -> Output {
        self.apply_kustomization(&format!(
            "resources:\n  - {}/kubernetes/{base}\n{extra}",
            self.deploy()
        ))
    }

    /// deploy/ as a kustomization in this test's dir names it: relative, and from where the
    /// dir really is, since kustomize follows symlinks (target/kube may be one, to a cluster
    /// built in another clone, whose deploy/ is not this one's).
    pub fn deploy(&self) -> String {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        let (dir, root) = (real(&self.dir), real(Path::new(ROOT)));
        let common = dir
            .components()
            .zip(root.components())
            .take_while(|(a, b)| a == b)
            .count();
        let up = dir.components().count() - common;
        let down = root.components().skip(common);
        let path: PathBuf = std::iter::repeat_n(Path::new(".."), up)
            .map(Path::to_path_buf)
            .chain(down.map(|c| PathBuf::from(c.as_os_str())))
            .chain([PathBuf::from("deploy")])
            .collect();
        path.to_str().expect("a UTF-8 path").to_string()
    }

    /// Applies, server-side, a kustomization of this test's own (its `resources:`,
    /// `components:`, patches; the namespace is set here); kubectl's output.
    pub fn apply_kustomization(&self, body: &str) -> Output {
        let text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {}\n{body}",
            self.name
        );
        std::fs::write(self.dir.join("kustomization.yaml"), text).expect("write kustomization");
        let dir = self.dir.to_str().expect("a UTF-8 path");
        self.cluster.output(&[
            "apply",
            "--server-side",
            "--field-manager=memprobe-tests",
            "-k",
            dir,
        ])
    }

    /// Writes a file of this test's own; its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write a file under target/kube/tests");
        path
    }

    /// kubectl in this namespace, which must succeed.
    pub fn run(&self, args: &[&str]) -> String {
        self.cluster.run(&[&["-n", &self.name], args].concat())
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cluster.output(&[&["-n", &self.name], args].concat())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        self.cluster.json(&[&["-n", &self.name], args].concat())
    }

    /// The pods of this namespace, as the API server has them.
    pub fn pods(&self) -> Vec<Value> {
        self.json(&["get", "pods"])
            .ok()
            .and_then(|list| list["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The pods the kubelet reports Ready, not being deleted.
    pub fn ready_pods(&self) -> Vec<Value> {
        self.pods().into_iter().filter(pod_ready).collect()
    }

    /// The pod's events and its containers' logs, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = said(&self.output(&["get", "events", "--sort-by=.lastTimestamp"]));
        for pod in self.pods() {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            for container in ["memprobe", "kms"] {
                let logs = self.output(&["logs", name, "-c", container, "--tail=20"]);
                out.push_str(&format!("--- {name}/{container}:\n{}", said(&logs)));
            }
        }
        out
    }
}

/// Whether the pod's Ready condition is True and it is not being deleted.
pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && condition(pod, "Ready") == Some("True".to_string())
}

/// A pod condition's status ("True", "False").
pub fn condition(pod: &Value, kind: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// A container's status in the pod (init containers included: memprobe is one).
pub fn container_status(pod: &Value, name: &str) -> Option<Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // A namespace being deleted takes no new pods; the pods' preStop hooks would wait up
        // to an hour for sessions, so they are ended now.
        let _ = self
            .cluster
            .output(&["delete", "namespace", &self.name, "--wait=false"]);
        let _ = self.output(&[
            "delete",
            "pods",
            "--all",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
