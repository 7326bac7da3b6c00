//! `memprobe-fleet`: the process that holds the Kubernetes client. memprobe starts it, next
//! to its own executable, only with `--fleet kubernetes` or `--events`, and only once a
//! request is due; it answers memprobe's requests ([`super::wire`]) on the API server.
//!
//! Why a process of its own: kube, k8s-openapi and rustls more than doubled the sidecar's
//! text and relocations, and the kernel faults text in by windows, so the client cost
//! memory in every memprobe, fleet on or off. In a second executable, the link leaves them
//! out of `memprobe`.
//!
//! Every answer is read up to [`MAX_ANSWER_BYTES`], lists in pages of [`PAGE`], and a list
//! keeps at most [`MAX_LEASES`] leases (more is a failure, never a partial view); each
//! request has its deadline. The kubeconfig and the service account's files go through
//! memprobe's file rules before the client reads them (regular files only, a size cap, under
//! the deadline). Lease requests and Events are two lanes: an Event the API server is slow to
//! take never holds a renewal up. The child stops with memprobe: it asks for SIGTERM when
//! its parent dies, and on that, or at the end of its stdin, ends its whole process group
//! (an exec credential plugin included).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Pod as PodObject};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, GetParams, ListParams, ObjectList, PartialObjectMeta, PostParams};
use kube::core::Request as Call;
use kube::{Client, Config, Resource};
use nix::sys::signal::{SigSet, Signal};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, OnceCell, mpsc};

use super::wire::{self, Checked, Hello, MAX_REQUEST_LINE, Reply, Request};
use crate::policy::fleet::{Action, Answer, Seen};
use crate::units::{Human, clip};

/// The child's executable, next to memprobe's.
pub const EXECUTABLE: &str = "memprobe-fleet";

/// The label every lease of a fleet carries, so one listing finds them all.
pub const FLEET_LABEL: &str = "memprobe.io/fleet";
/// A wait lease's annotation: how full its instance is, 0 to 1.
pub const FULLNESS: &str = "memprobe.io/fullness";
/// Who writes the Events.
pub const CONTROLLER: &str = "memprobe.io/memprobe";

/// Each HTTP request's deadline.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most read of one answer: a page of leases is a few tens of KiB.
pub const MAX_ANSWER_BYTES: usize = 2 << 20;
/// Items asked for per page of a list.
pub const PAGE: u32 = 50;
/// A fleet's leases, at most: its slots and one wait lease per instance.
pub const MAX_LEASES: usize = 256;
/// A fleet's pods counted, at most.
pub const MAX_PODS: usize = 5000;
/// The most read of a kubeconfig or a service account's file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Events waiting in the child, at most; more are answered dropped.
const EVENT_QUEUE: usize = 8;
/// The service account's files, as the client reads them in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `memprobe-fleet`'s `main`.
pub fn main() -> ExitCode {
    // First of all: a child whose memprobe is gone must not live on.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("memprobe-fleet: cannot ask to stop with memprobe: {e}");
        return ExitCode::FAILURE;
    }
    // SIGTERM (the parent's death) is taken by a thread of its own, blocked everywhere else:
    // it stops the group even while the runtime's one thread is held (an exec credential
    // plugin is run without yielding).
    let mut terminate = SigSet::empty();
    terminate.add(Signal::SIGTERM);
    if let Err(e) = terminate.thread_block() {
        eprintln!("memprobe-fleet: cannot take SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let watching = std::thread::Builder::new()
        .name("memprobe-fleet-stop".into())
        .spawn(move || {
            let _ = terminate.wait();
            stop();
        });
    if let Err(e) = watching {
        eprintln!("memprobe-fleet: cannot watch for SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("memprobe-fleet: cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

/// Ends this process and, when it leads its group (as memprobe starts it), the group: an
/// exec credential plugin it started goes with it.
fn stop() -> ! {
    let me = nix::unistd::getpid();
    if nix::unistd::getpgrp() == me {
        let _ = nix::sys::signal::killpg(me, Signal::SIGKILL);
    }
    std::process::exit(0)
}

async fn serve() -> ExitCode {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let hello: Hello = match wire::read(&mut stdin, MAX_REQUEST_LINE).await {
        Ok(Some(hello)) => hello,
        _ => {
            eprintln!(
                "memprobe-fleet: memprobe starts this with --fleet kubernetes or --events; \
                 it is not run by hand"
            );
            return ExitCode::from(2);
        }
    };
    if std::os::unix::process::parent_id() != hello.parent {
        stop();
    }
    let api = Arc::new(Api {
        hello,
        client: OnceCell::new(),
        facts: Mutex::new(None),
        acquired: Mutex::new(BTreeMap::new()),
    });
    let (replies, mut outgoing) = mpsc::channel::<Reply>(EVENT_QUEUE + 4);
    tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(reply) = outgoing.recv().await {
            if stdout.write_all(&wire::line(&reply)).await.is_err() || stdout.flush().await.is_err()
            {
                stop();
            }
        }
    });
    let lease_lane = lane(Arc::clone(&api), replies.clone(), 2);
    let event_lane = lane(Arc::clone(&api), replies.clone(), EVENT_QUEUE);
    loop {
        let request = match wire::read::<Request>(&mut stdin, MAX_REQUEST_LINE).await {
            Ok(Some(request)) => request,
            // memprobe closed the pipe (it stopped) or broke the protocol.
            _ => stop(),
        };
        match request {
            Request::Lease { .. } | Request::Check { .. } => {
                if lease_lane.send(request).await.is_err() {
                    stop();
                }
            }
            Request::Event { id, .. } => {
                if event_lane.try_send(request).is_err() {
                    let dropped = Reply::Event {
                        id,
                        requests: 0,
                        failed: None,
                        dropped: true,
                    };
                    let _ = replies.send(dropped).await;
                }
            }
        }
    }
}

/// A lane: requests handled one after the other, each answered.
fn lane(api: Arc<Api>, replies: mpsc::Sender<Reply>, queue: usize) -> mpsc::Sender<Request> {
    let (requests, mut incoming) = mpsc::channel::<Request>(queue);
    tokio::spawn(async move {
        while let Some(request) = incoming.recv().await {
            let reply = api.handle(request).await;
            if replies.send(reply).await.is_err() {
                return;
            }
        }
    });
    requests
}

/// What the pod's own object says, read once.
#[derive(Clone, Debug)]
struct PodFacts {
    uid: Option<String>,
    /// The fleet: `--fleet-name`, else the Deployment's (or other controller's) name.
    fleet: Result<String, String>,
    /// The pod's labels without those of one revision: its fleet's pods.
    selector: String,
}

/// A request that failed: lost to another writer (409, 404), or anything else.
#[derive(Debug)]
enum Failure {
    Lost,
    Other(String),
}

impl Failure {
    fn into_string(self) -> String {
        match self {
            Failure::Lost => "conflict".to_string(),
            Failure::Other(why) => why,
        }
    }
}

struct Api {
    hello: Hello,
    client: OnceCell<Client>,
    facts: Mutex<Option<PodFacts>>,
    /// When each slot held was acquired, kept across renewals.
    acquired: Mutex<BTreeMap<String, MicroTime>>,
}

/// The HTTP requests one request made.
#[derive(Default)]
struct Count(u32);

impl Api {
    async fn handle(&self, request: Request) -> Reply {
        let mut count = Count::default();
        match request {
            Request::Lease {
                id,
                action,
                fleet,
                me,
                duration_secs,
            } => {
                let job = Job {
                    fleet,
                    me,
                    duration: Duration::from_secs(duration_secs),
                };
                let answer = match self.lease(&action, &job, &mut count).await {
                    Ok(answer) => answer,
                    Err(Failure::Lost) => Answer::Lost,
                    Err(Failure::Other(why)) => Answer::Failed(why),
                };
                let fleet = match action {
                    Action::ReadPod => self.facts.lock().await.as_ref().map(|f| f.fleet.clone()),
                    _ => None,
                };
                Reply::Lease {
                    id,
                    requests: count.0,
                    answer,
                    fleet,
                }
            }
            Request::Check { id, leases } => Reply::Check {
                id,
                checked: self.check(leases, &mut count).await,
                requests: count.0,
            },
            Request::Event {
                id,
                reason,
                kind,
                action,
                note,
            } => {
                let failed = self
                    .event(&reason, &kind, &action, &note, &mut count)
                    .await
                    .err()
                    .map(Failure::into_string);
                Reply::Event {
                    id,
                    requests: count.0,
                    failed,
                    dropped: false,
                }
            }
        }
    }

    /// The client, made on first use (and again after a failure to make it).
    async fn client(&self) -> Result<Client, Failure> {
        let made = self
            .client
            .get_or_try_init(|| async {
                match tokio::time::timeout(DEADLINE, make_client()).await {
                    Ok(made) => made,
                    Err(_) => Err(format!(
                        "the Kubernetes configuration was not read within {}: its file system \
                         may hang",
                        Human(DEADLINE)
                    )),
                }
            })
            .await;
        made.cloned().map_err(Failure::Other)
    }

    fn leases(&self) -> Call {
        Call::new(Lease::url_path(&(), Some(&self.hello.namespace)))
    }

    async fn lease(&self, action: &Action, job: &Job, n: &mut Count) -> Result<Answer, Failure> {
        let client = self.client().await?;
        let leases = self.leases();
        let pp = PostParams::default();
        match action {
            Action::Idle => Ok(Answer::Pod),
            Action::ReadPod => {
                let facts = self.read_pod(&client, n).await?;
                if let Err(why) = &facts.fleet {
                    return Err(Failure::Other(why.clone()));
                }
                Ok(Answer::Pod)
            }
            Action::CountPods => {
                let selector = self.read_pod(&client, n).await?.selector;
                let pods = Call::new(PodObject::url_path(&(), Some(&self.hello.namespace)));
                let mut counted = 0usize;
                let mut token: Option<String> = None;
                loop {
                    let mut lp = ListParams::default().labels(&selector).limit(PAGE);
                    if let Some(token) = &token {
                        lp = lp.continue_token(token);
                    }
                    let page: ObjectList<PartialObjectMeta<PodObject>> =
                        call(&client, pods.list_metadata(&lp), n).await?;
                    counted += page
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count();
                    if counted > MAX_PODS {
                        return Err(Failure::Other(format!(
                            "over {MAX_PODS} pods match the fleet's labels {selector}: \
                             set a drain budget in instances (--fleet-drain-budget 1)"
                        )));
                    }
                    token = page.metadata.continue_.filter(|t| !t.is_empty());
                    if token.is_none() {
                        break;
                    }
                }
                Ok(Answer::Counted(u32::try_from(counted).unwrap_or(u32::MAX)))
            }
            Action::List => {
                let selector = format!("{FLEET_LABEL}={}", job.fleet);
                let mut seen = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let mut lp = ListParams::default().labels(&selector).limit(PAGE);
                    if let Some(token) = &token {
                        lp = lp.continue_token(token);
                    }
                    let page: ObjectList<Lease> = call(&client, leases.list(&lp), n).await?;
                    seen.extend(page.items.iter().map(seen_of));
                    if seen.len() > MAX_LEASES {
                        return Err(Failure::Other(format!(
                            "over {MAX_LEASES} leases carry the label {selector}: delete those \
                             memprobe did not write, or name this fleet apart (--fleet-name)"
                        )));
                    }
                    token = page.metadata.continue_.filter(|t| !t.is_empty());
                    if token.is_none() {
                        break;
                    }
                }
                Ok(Answer::Listed(seen))
            }
            Action::Take { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let lease = self.build(job, slot, Some(&job.me), version.clone(), now.clone());
                let body = to_json(&lease)?;
                let written: Lease = match version {
                    None => call(&client, leases.create(&pp, body), n).await?,
                    Some(_) => call(&client, leases.replace(slot, &pp, body), n).await?,
                };
                self.acquired.lock().await.insert(slot.clone(), now);
                Ok(Answer::Written(version_of(&written)))
            }
            Action::Renew { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let acquired = self.acquired.lock().await.get(slot).cloned();
                let mut lease = self.build(job, slot, Some(&job.me), Some(version.clone()), now);
                if let (Some(spec), Some(acquired)) = (&mut lease.spec, acquired) {
                    spec.acquire_time = Some(acquired);
                }
                let written: Lease =
                    call(&client, leases.replace(slot, &pp, to_json(&lease)?), n).await?;
                Ok(Answer::Written(version_of(&written)))
            }
            Action::Release { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let mut lease = self.build(job, slot, None, Some(version.clone()), now);
                if let Some(spec) = &mut lease.spec {
                    spec.acquire_time = None;
                    spec.renew_time = None;
                }
                let written: Lease =
                    call(&client, leases.replace(slot, &pp, to_json(&lease)?), n).await?;
                self.acquired.lock().await.remove(slot);
                Ok(Answer::Written(version_of(&written)))
            }
            Action::WriteWait { version, fullness } => {
                let name = wait_name(&job.fleet, &job.me);
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let uid = self.read_pod(&client, n).await?.uid;
                let mut lease = self.build(job, &name, Some(&job.me), version.clone(), now);
                lease.metadata.annotations = Some(BTreeMap::from([(
                    FULLNESS.to_string(),
                    format!("{fullness:.4}"),
                )]));
                lease.metadata.owner_references = owned_by_pod(&self.hello.pod, uid);
                let written: Lease = match version {
                    Some(_) => {
                        call(&client, leases.replace(&name, &pp, to_json(&lease)?), n).await?
                    }
                    None => match call(&client, leases.create(&pp, to_json(&lease)?), n).await {
                        // Left by this pod's previous memprobe: taken over at its version.
                        Err(Failure::Lost) => {
                            let old: Lease =
                                call(&client, leases.get(&name, &GetParams::default()), n).await?;
                            lease.metadata.resource_version = old.metadata.resource_version;
                            call(&client, leases.replace(&name, &pp, to_json(&lease)?), n).await?
                        }
                        other => other?,
                    },
                };
                Ok(Answer::Written(version_of(&written)))
            }
            Action::DeleteWait => {
                let name = wait_name(&job.fleet, &job.me);
                let deleted: Result<serde_json::Value, Failure> =
                    call(&client, leases.delete(&name, &DeleteParams::default()), n).await;
                match deleted {
                    Ok(_) | Err(Failure::Lost) => Ok(Answer::Deleted),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A lease of this fleet's, as memprobe writes it.
    fn build(
        &self,
        job: &Job,
        name: &str,
        holder: Option<&str>,
        version: Option<String>,
        now: MicroTime,
    ) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.hello.namespace.clone()),
                resource_version: version,
                labels: Some(BTreeMap::from([(
                    FLEET_LABEL.to_string(),
                    job.fleet.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(
                    i32::try_from(job.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..LeaseSpec::default()
            }),
        }
    }

    /// The start check: reads the pod's own object and, with the fleet on, lists its Leases
    /// (one item), the two reads every later request rests on. A refusal is said with what
    /// grants the call; anything else is an outage.
    async fn check(&self, leases: bool, n: &mut Count) -> Checked {
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => return Checked::Failed(e.into_string()),
        };
        let ns = &self.hello.namespace;
        let pod = &self.hello.pod;
        let pods = Call::new(PodObject::url_path(&(), Some(ns)));
        let read_pod = pods.get_metadata(pod, &GetParams::default());
        let list = ListParams::default().limit(1);
        let list_leases = self.leases().list(&list);
        let mut calls = vec![(read_pod, format!("reading pod {ns}/{pod}"), "pods get")];
        if leases {
            calls.push((
                list_leases,
                format!("listing Leases in {ns}"),
                "leases list",
            ));
        }
        for (request, doing, grant) in calls {
            let (status, body) = match exchange(&client, request, n).await {
                Ok(answer) => answer,
                Err(e) => return Checked::Failed(format!("{doing}: {}", e.into_string())),
            };
            match status.as_u16() {
                200..=299 => {}
                401 => {
                    return Checked::Refused(format!(
                        "{doing}: {}: the API server does not accept memprobe's credentials \
                         (the pod's service account token, or KUBECONFIG's user)",
                        refused(401, &body)
                    ));
                }
                403 => {
                    return Checked::Refused(format!(
                        "{doing}: {}: the pod's ServiceAccount needs a Role granting {grant} \
                         in {ns}, bound to it (deploy/kubernetes/components/fleet has both)",
                        refused(403, &body)
                    ));
                }
                404 if !doing.starts_with("listing") => {
                    return Checked::Refused(format!(
                        "{doing}: 404 NotFound: check --pod-name and --pod-namespace (the \
                         Downward API's metadata.name and metadata.namespace)"
                    ));
                }
                code => return Checked::Failed(format!("{doing}: {}", refused(code, &body))),
            }
        }
        Checked::Passed
    }

    /// Reads the pod's own metadata, once: its uid (for Events and owner references), its
    /// fleet and its labels.
    async fn read_pod(&self, client: &Client, n: &mut Count) -> Result<PodFacts, Failure> {
        let mut facts = self.facts.lock().await;
        if let Some(facts) = &*facts {
            return Ok(facts.clone());
        }
        let pods = Call::new(PodObject::url_path(&(), Some(&self.hello.namespace)));
        let read: Result<PartialObjectMeta<PodObject>, Failure> = call(
            client,
            pods.get_metadata(&self.hello.pod, &GetParams::default()),
            n,
        )
        .await;
        let meta = read
            .map_err(|e| match e {
                Failure::Lost => Failure::Other(format!(
                    "pod {}/{} not found: check --pod-name and --pod-namespace",
                    self.hello.namespace, self.hello.pod
                )),
                other => other,
            })?
            .metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let read = PodFacts {
            uid: meta.uid.clone(),
            fleet: match &self.hello.fleet_name {
                Some(name) => Ok(name.clone()),
                None => fleet_of(&self.hello.pod, &meta),
            },
            selector: selector(&labels),
        };
        *facts = Some(read.clone());
        Ok(read)
    }

    async fn event(
        &self,
        reason: &str,
        kind: &str,
        action: &str,
        note: &str,
        n: &mut Count,
    ) -> Result<(), Failure> {
        let client = self.client().await?;
        let facts = self.read_pod(&client, n).await?;
        let pod = &self.hello.pod;
        let namespace = &self.hello.namespace;
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{pod}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            type_: Some(kind.to_string()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: Some(namespace.clone()),
                uid: facts.uid.clone(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(clip(pod, 120)),
            ..Event::default()
        };
        let events = Call::new(Event::url_path(&(), Some(namespace)));
        let _: serde_json::Value = call(
            &client,
            events.create(&PostParams::default(), to_json(&event)?),
            n,
        )
        .await?;
        Ok(())
    }
}

/// What a lease request needs besides its action.
struct Job {
    fleet: String,
    me: String,
    duration: Duration,
}

fn wait_name(fleet: &str, me: &str) -> String {
    crate::policy::fleet::Names {
        fleet: fleet.to_string(),
        me: me.to_string(),
    }
    .wait()
}

/// A wait lease belongs to its pod: deleted with it, so a pod deleted while it waits does
/// not leave its lease behind.
fn owned_by_pod(pod: &str, uid: Option<String>) -> Option<Vec<OwnerReference>> {
    uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.to_string(),
            uid,
            ..OwnerReference::default()
        }]
    })
}

fn to_json(object: &impl serde::Serialize) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(object).map_err(|e| Failure::Other(format!("cannot write a request: {e}")))
}

/// One HTTP request with its deadline, its answer read up to [`MAX_ANSWER_BYTES`]; 409 and
/// 404 are [`Failure::Lost`].
async fn call<T: serde::de::DeserializeOwned>(
    client: &Client,
    request: Result<hyper::Request<Vec<u8>>, kube::core::request::Error>,
    n: &mut Count,
) -> Result<T, Failure> {
    let (status, body) = exchange(client, request, n).await?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            Failure::Other(format!(
                "an answer that is not the object asked for: {}",
                clip(&e.to_string(), 200)
            ))
        });
    }
    // 409 (Conflict at a stale version, AlreadyExists on a create) or 404: another writer
    // won, or the object is gone.
    if status.as_u16() == 409 || status.as_u16() == 404 {
        return Err(Failure::Lost);
    }
    Err(Failure::Other(refused(status.as_u16(), &body)))
}

/// One HTTP request with its deadline: the answer's code and its body, read up to
/// [`MAX_ANSWER_BYTES`].
async fn exchange(
    client: &Client,
    request: Result<hyper::Request<Vec<u8>>, kube::core::request::Error>,
    n: &mut Count,
) -> Result<(hyper::StatusCode, Vec<u8>), Failure> {
    let request = request.map_err(|e| Failure::Other(format!("cannot make a request: {e}")))?;
    n.0 += 1;
    let exchange = async {
        let response = client
            .send(request.map(kube::client::Body::from))
            .await
            .map_err(|e| Failure::Other(clip(&e.to_string(), 200)))?;
        let status = response.status();
        let body = capped(response.into_body()).await?;
        Ok::<_, Failure>((status, body))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| Failure::Other(format!("no answer within {}", Human(DEADLINE))))?
}

/// A refusal as `fleet.api` says it: the status code and the API server's reason (Forbidden,
/// Unauthorized, TooManyRequests...), which say what to fix. Its message, the answer's free
/// text, is never passed on to `/status`, where the open port shows it: only a reason of
/// letters, as Kubernetes writes them.
fn refused(code: u16, body: &[u8]) -> String {
    let reason = serde_json::from_slice::<kube::core::Status>(body)
        .ok()
        .map(|s| s.reason)
        .filter(|r| r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphabetic()))
        .unwrap_or_default();
    format!("{code} {reason}").trim_end().to_string()
}

/// An answer's body, refused past [`MAX_ANSWER_BYTES`] without keeping more.
async fn capped(mut body: kube::client::Body) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::Other(format!(
            "an answer over {}: not read further (a proxy or server sending more than the \
             API server does?)",
            crate::units::Bytes(MAX_ANSWER_BYTES as u64)
        ))
    };
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Other(clip(&e.to_string(), 200)))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The client, configured as kubectl is: `KUBECONFIG` or `~/.kube/config` when present, else
/// the pod's service account; each file it will read checked by memprobe's file rules first.
async fn make_client() -> Result<Client, String> {
    let checked = tokio::task::spawn_blocking(check_config_files)
        .await
        .map_err(|e| format!("cannot check the Kubernetes configuration: {e}"))?;
    checked?;
    let mut config = Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {}", clip(&e.to_string(), 300)))?;
    config.connect_timeout = Some(DEADLINE);
    config.read_timeout = Some(DEADLINE);
    config.write_timeout = Some(DEADLINE);
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// The files the client reads for its configuration, when present, checked as memprobe
/// checks every file: regular, at most [`MAX_CONFIG_BYTES`], readable to the end.
fn check_config_files() -> Result<(), String> {
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => files.extend(std::env::split_paths(&list).map(|p| ("KUBECONFIG", p))),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                files.push(("the kubeconfig", Path::new(&home).join(".kube/config")));
            }
        }
    }
    for name in ["token", "ca.crt", "namespace"] {
        files.push((
            "the service account's file",
            Path::new(SERVICE_ACCOUNT).join(name),
        ));
    }
    for (what, path) in files {
        check_config_file(what, &path)?;
    }
    Ok(())
}

fn check_config_file(what: &str, path: &Path) -> Result<(), String> {
    use std::io::Read;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    let shown = path.display();
    let file = crate::files::open_regular(path).map_err(|e| format!("{what} {shown} {e}"))?;
    let mut read = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut read)
        .map_err(|e| format!("{what} {shown} cannot be read: {e}"))?;
    if read.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "{what} {shown} is over {}: a Kubernetes configuration is a few KiB (check the path)",
            crate::units::Bytes(MAX_CONFIG_BYTES)
        ));
    }
    Ok(())
}

fn version_of(lease: &Lease) -> String {
    lease.metadata.resource_version.clone().unwrap_or_default()
}

/// A listed lease as the fleet's rules see it, its strings clipped.
fn seen_of(lease: &Lease) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    let short = |s: &str| clip(s, 256);
    Seen {
        name: short(lease.metadata.name.as_deref().unwrap_or_default()),
        holder: spec
            .holder_identity
            .filter(|h| !h.is_empty())
            .map(|h| short(&h)),
        renewed: spec.renew_time.map(|t| t.0.to_string()),
        duration: Duration::from_secs(
            spec.lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30),
        ),
        version: short(&version_of(lease)),
        fullness: lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(FULLNESS))
            .and_then(|f| f.parse::<f64>().ok())
            .filter(|f| f.is_finite()),
    }
}

/// The fleet a pod belongs to: its controller's name, the Deployment's for a ReplicaSet.
fn fleet_of(pod: &str, meta: &ObjectMeta) -> Result<String, String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .ok_or_else(|| {
            format!("pod {pod} has no controller to name its fleet: set --fleet-name")
        })?;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let name = match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => owner
            .name
            .strip_suffix(&format!("-{hash}"))
            .unwrap_or(&owner.name),
        _ => &owner.name,
    };
    Ok(name.to_string())
}

/// A pod's labels as a selector, without those that differ from one revision to the next.
fn selector(labels: &BTreeMap<String, String>) -> String {
    const REVISION: [&str; 4] = [
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
    ];
    labels
        .iter()
        .filter(|(k, _)| !REVISION.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod refusal_tests {
    use super::refused;

    #[test]
    fn a_refusal_shows_its_code_and_reason_never_the_answers_text() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"leases is forbidden: token s3cr3t","reason":"Forbidden","code":403}"#;
        assert_eq!(refused(403, body), "403 Forbidden");
        let odd =
            br#"{"kind":"Status","reason":"Forbidden: token s3cr3t","message":"x","code":403}"#;
        assert_eq!(
            refused(403, odd),
            "403",
            "a reason that is not a word is not shown"
        );
        assert_eq!(refused(500, b"<html>s3cr3t</html>"), "500");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(kind: &str, name: &str, hash: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            labels: hash.map(|h| {
                BTreeMap::from([
                    ("app".to_string(), "kms".to_string()),
                    ("pod-template-hash".to_string(), h.to_string()),
                ])
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_fleet_is_the_deployment_of_the_pods_replicaset_or_its_controller() {
        let meta = owned_by("ReplicaSet", "kms-media-7d9f8c6b5", Some("7d9f8c6b5"));
        assert_eq!(
            fleet_of("kms-media-7d9f8c6b5-x2x7z", &meta).unwrap(),
            "kms-media"
        );
        let meta = owned_by("StatefulSet", "kms", None);
        assert_eq!(fleet_of("kms-0", &meta).unwrap(), "kms");
        let e = fleet_of("lonely", &ObjectMeta::default()).unwrap_err();
        assert_eq!(
            e,
            "pod lonely has no controller to name its fleet: set --fleet-name"
        );
    }

    #[test]
    fn the_fleets_pods_are_selected_by_the_labels_every_revision_shares() {
        let meta = owned_by("ReplicaSet", "kms-7d9f8c6b5", Some("7d9f8c6b5"));
        assert_eq!(selector(&meta.labels.unwrap()), "app=kms");
    }

    #[test]
    fn a_listed_lease_is_seen_with_its_holder_renewal_and_fullness() {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("memprobe-kms-wait-kms-1".into()),
                resource_version: Some("42".into()),
                annotations: Some(BTreeMap::from([(FULLNESS.into(), "0.9312".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("kms-1".into()),
                lease_duration_seconds: Some(60),
                ..LeaseSpec::default()
            }),
        };
        let s = seen_of(&lease);
        assert_eq!(s.holder.as_deref(), Some("kms-1"));
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.version, "42");
        assert_eq!(s.fullness, Some(0.9312));
        let released = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(seen_of(&released).holder, None, "an empty holder is none");
    }

    #[test]
    fn a_wait_lease_belongs_to_its_pod_so_it_goes_when_the_pod_is_deleted() {
        let owners = owned_by_pod("kms-1", Some("0c1d-uid".into())).unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Pod");
        assert_eq!(owners[0].api_version, "v1");
        assert_eq!(owners[0].name, "kms-1");
        assert_eq!(owners[0].uid, "0c1d-uid");
        assert_eq!(
            owners[0].controller, None,
            "the pod owns the lease; it does not control it"
        );
        assert!(owned_by_pod("kms-1", None).is_none());
    }

    #[test]
    fn a_kubeconfig_that_is_a_device_a_fifo_or_too_large_is_refused_before_it_is_read() {
        let e = check_config_file("KUBECONFIG", Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero is a character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = check_config_file("KUBECONFIG", &fifo).unwrap_err();
        assert!(e.contains("is a FIFO"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = check_config_file("KUBECONFIG", &big).unwrap_err();
        assert!(e.contains("is over 1.00 MiB"), "{e}");
        let absent = dir.path().join("absent");
        assert!(
            check_config_file("KUBECONFIG", &absent).is_ok(),
            "an absent file is skipped, as kubectl does"
        );
    }
}
