//! `--fleet kubernetes` and `--events`: the fleet's rules ([`Member`]) carried out on the
//! API server, and the decisions sent as Events.
//!
//! The monitor's side ([`Kubernetes`]) only locks a mutex: it writes what the instance needs
//! and reads the gate. Every request runs on a thread of its own (`memprobe-fleet`, with a
//! runtime of its own), with a deadline: an API server that hangs, a kubeconfig on a stuck
//! mount or a slow TLS handshake can delay a drain, never a step or a probe.
//!
//! The client is kube's, configured as kubectl is: `KUBECONFIG` or `~/.kube/config` when
//! present, else the pod's service account. It is made on the first request, so an instance
//! that stays healthy never reads a token or opens a connection.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Pod as PodObject};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use tokio::time::Instant;
use tracing::{info, warn};

use super::events::{Limiter, Note, Teller};
use super::{Ask, Coordinator, Mode, Pod, Settings};
use crate::policy::fleet::{Action, Answer, Budget, Member, Names, Need, Seen, Wait};
use crate::policy::{Gate, State, Transition};
use crate::status::FleetStatus;

/// The label every lease of a fleet carries, so one listing finds them all.
pub const FLEET_LABEL: &str = "memprobe.io/fleet";
/// A wait lease's annotation: how full its instance is, 0 to 1.
pub const FULLNESS: &str = "memprobe.io/fullness";
/// Who writes the Events.
pub const CONTROLLER: &str = "memprobe.io/memprobe";

/// Each request's deadline.
const DEADLINE: Duration = Duration::from_secs(10);
/// How often the fleet's thread looks for work.
const BEAT: Duration = Duration::from_millis(250);
/// Events waiting to be sent, at most; more are dropped (and counted).
const QUEUE: usize = 32;

/// What the monitor's side and the fleet's thread share.
#[derive(Debug)]
struct Shared {
    member: Option<Member>,
    need: Need,
    pod_uid: Option<String>,
    requests: u64,
    failures: u64,
    events_sent: u64,
    events_dropped: u64,
    /// The last failure of an Event or a request, while the API server fails.
    failing: Option<String>,
    asked: bool,
}

/// The monitor's side of a member on Kubernetes.
pub struct Kubernetes {
    shared: Arc<Mutex<Shared>>,
    events: Option<SyncSender<Note>>,
    teller: Teller,
    limiter: Limiter,
    budget: Budget,
    pod: Pod,
    fleet_on: bool,
}

impl Kubernetes {
    /// Starts the fleet's thread; it makes no request until one is needed.
    pub fn start(settings: &Settings, pod: &Pod, interval: Duration) -> Self {
        let fleet_on = settings.mode == Mode::Kubernetes;
        let member = fleet_on.then(|| {
            let names = Names {
                fleet: settings.name.clone().unwrap_or_default(),
                me: pod.name.clone(),
            };
            Member::new(names, settings.budget, settings.lease, interval)
        });
        let shared = Arc::new(Mutex::new(Shared {
            member,
            need: Need::default(),
            pod_uid: None,
            requests: 0,
            failures: 0,
            events_sent: 0,
            events_dropped: 0,
            failing: None,
            asked: false,
        }));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let worker = Worker {
            shared: Arc::clone(&shared),
            settings: settings.clone(),
            pod: pod.clone(),
            client: None,
            pod_facts: None,
            acquired: BTreeMap::new(),
        };
        let events = settings.events.then_some(tx);
        let spawned = std::thread::Builder::new()
            .name("memprobe-fleet".into())
            .spawn(move || worker.run(rx));
        if let Err(e) = spawned {
            // The gate stays closed ("asking the fleet"): no drain starts through a fleet that
            // cannot be asked; --critical still recycles.
            warn!("cannot start the fleet's thread: {e}; no drain will start through the fleet");
        }
        Kubernetes {
            shared,
            events,
            teller: Teller::default(),
            limiter: Limiter::default(),
            budget: settings.budget,
            pod: pod.clone(),
            fleet_on,
        }
    }

    fn send(&mut self, notes: Vec<Note>) {
        let Some(events) = &self.events else {
            return;
        };
        let now = Instant::now();
        for note in notes {
            if !self.limiter.allow(note.reason, now) {
                continue;
            }
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                events.try_send(note)
            {
                lock(&self.shared).events_dropped += 1;
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Coordinator for Kubernetes {
    fn told(&mut self, transition: &Transition, requested: bool) {
        if let Some(member) = &mut lock(&self.shared).member {
            member.told(transition.to, requested);
        }
        let notes = self
            .teller
            .transition(transition.to, &transition.reason, requested);
        self.send(notes);
    }

    fn step(&mut self, ask: Ask<'_>) -> Gate {
        let wait = {
            let mut shared = lock(&self.shared);
            shared.need = Need {
                wants: ask.wants,
                fullness: ask.fullness,
            };
            match &shared.member {
                None => return Gate::Open,
                Some(member) => member.wait(Instant::now(), ask.fullness),
            }
        };
        let Some(wait) = wait else {
            return Gate::Open;
        };
        let said = wait.to_string();
        if ask.wants && wait != Wait::Asking {
            let notes = self
                .teller
                .deferred(ask.state == State::Elevated, ask.reason, &said);
            self.send(notes);
        }
        Gate::Closed(said)
    }

    fn status(&self) -> Option<FleetStatus> {
        let shared = lock(&self.shared);
        let member = shared.member.as_ref();
        let now = Instant::now();
        let wait = member.and_then(|m| m.wait(now, shared.need.fullness));
        let failing = member
            .and_then(|m| m.failing().map(str::to_owned))
            .or_else(|| shared.failing.clone());
        Some(FleetStatus {
            kind: "kubernetes",
            fleet: member
                .map(|m| m.names().fleet.clone())
                .filter(|f| !f.is_empty()),
            pod: self.pod.name.clone(),
            namespace: self.pod.namespace.clone(),
            budget: self.fleet_on.then(|| self.budget.to_string()),
            slots: member.map(Member::slots),
            holding: member.and_then(|m| m.held().map(|h| h.slot.clone())),
            waiting: shared.need.wants && wait.is_some(),
            gate: wait.map(|w| w.to_string()),
            api: match (failing, shared.asked) {
                (Some(why), _) => format!("unreachable: {why}"),
                (None, true) => "reachable".to_string(),
                (None, false) => "not asked yet".to_string(),
            },
            api_requests: shared.requests,
            api_failures: shared.failures,
            events: self.events.is_some(),
            events_sent: shared.events_sent,
            events_dropped: shared.events_dropped,
            when_unreachable: if self.fleet_on {
                "no new drain starts through the fleet; a drain holding a slot goes on; \
                 --critical still recycles"
            } else {
                "Events are dropped; nothing else changes"
            },
        })
    }
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

/// The fleet's thread.
struct Worker {
    shared: Arc<Mutex<Shared>>,
    settings: Settings,
    pod: Pod,
    client: Option<Client>,
    pod_facts: Option<PodFacts>,
    /// When each slot held was acquired, kept across renewals.
    acquired: BTreeMap<String, MicroTime>,
}

impl Worker {
    fn run(mut self, events: Receiver<Note>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                warn!(
                    "cannot start the fleet's runtime: {e}; no drain will start through the fleet"
                );
                return;
            }
        };
        runtime.block_on(async move {
            loop {
                tokio::time::sleep(BEAT).await;
                loop {
                    match events.try_recv() {
                        Ok(note) => self.send_event(note).await,
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                let action = {
                    let mut shared = lock(&self.shared);
                    let need = shared.need;
                    match &mut shared.member {
                        Some(member) => member.next(Instant::now(), need),
                        None => Action::Idle,
                    }
                };
                if action == Action::Idle {
                    continue;
                }
                let answer = self.perform(&action).await;
                let mut shared = lock(&self.shared);
                shared.asked = true;
                if let Answer::Failed(why) = &answer {
                    shared.failures += 1;
                    if shared.failing.as_deref() != Some(why) {
                        warn!("fleet: {} failed: {why}", describe(&action));
                    }
                    shared.failing = Some(why.clone());
                } else {
                    if shared.failing.take().is_some() {
                        info!("fleet: the API server answers again");
                    }
                    said(&action, &answer);
                }
                if let (Action::ReadPod, Some(Ok(fleet))) =
                    (&action, self.pod_facts.as_ref().map(|f| f.fleet.clone()))
                    && let Some(member) = &mut shared.member
                {
                    member.set_fleet(fleet);
                }
                if let Some(member) = &mut shared.member {
                    member.answered(Instant::now(), answer);
                }
            }
        });
    }

    /// The client, made on first use.
    async fn client(&mut self) -> Result<Client, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let mut config = Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
        config.connect_timeout = Some(DEADLINE);
        config.read_timeout = Some(DEADLINE);
        config.write_timeout = Some(DEADLINE);
        let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn count(&self) {
        lock(&self.shared).requests += 1;
    }

    async fn perform(&mut self, action: &Action) -> Answer {
        match self.request(action).await {
            Ok(answer) => answer,
            Err(Failure::Lost) => Answer::Lost,
            Err(Failure::Other(why)) => Answer::Failed(why),
        }
    }

    async fn request(&mut self, action: &Action) -> Result<Answer, Failure> {
        let client = self.client().await.map_err(Failure::Other)?;
        let ns = self.pod.namespace.clone();
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let member_names = self.names();
        match action {
            // The loop never performs Idle; answered as a no-op all the same.
            Action::Idle => Ok(Answer::Pod),
            Action::ReadPod => {
                let facts = self.read_pod(&client).await?;
                if let Err(why) = &facts.fleet {
                    return Err(Failure::Other(why.clone()));
                }
                Ok(Answer::Pod)
            }
            Action::CountPods => {
                let selector = self
                    .pod_facts
                    .as_ref()
                    .map(|f| f.selector.clone())
                    .unwrap_or_default();
                let pods: Api<PodObject> = Api::namespaced(client, &ns);
                self.count();
                let list =
                    deadline(pods.list_metadata(&ListParams::default().labels(&selector))).await?;
                let n = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                Ok(Answer::Counted(u32::try_from(n).unwrap_or(u32::MAX)))
            }
            Action::List => {
                let selector = format!("{FLEET_LABEL}={}", member_names.fleet);
                self.count();
                let list = deadline(leases.list(&ListParams::default().labels(&selector))).await?;
                Ok(Answer::Listed(list.items.iter().map(seen).collect()))
            }
            Action::Take { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let lease = self.lease(
                    slot,
                    Some(&member_names.me),
                    version.clone(),
                    now.clone(),
                    now.clone(),
                    None,
                );
                self.count();
                let written = match version {
                    None => deadline(leases.create(&PostParams::default(), &lease)).await?,
                    Some(_) => {
                        deadline(leases.replace(slot, &PostParams::default(), &lease)).await?
                    }
                };
                self.acquired.insert(slot.clone(), now);
                Ok(Answer::Written(version_of(&written)))
            }
            Action::Renew { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let acquired = self
                    .acquired
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| now.clone());
                let lease = self.lease(
                    slot,
                    Some(&member_names.me),
                    Some(version.clone()),
                    acquired,
                    now,
                    None,
                );
                self.count();
                let written =
                    deadline(leases.replace(slot, &PostParams::default(), &lease)).await?;
                Ok(Answer::Written(version_of(&written)))
            }
            Action::Release { slot, version } => {
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let mut lease =
                    self.lease(slot, None, Some(version.clone()), now.clone(), now, None);
                if let Some(spec) = &mut lease.spec {
                    spec.acquire_time = None;
                    spec.renew_time = None;
                }
                self.count();
                let written =
                    deadline(leases.replace(slot, &PostParams::default(), &lease)).await?;
                self.acquired.remove(slot);
                Ok(Answer::Written(version_of(&written)))
            }
            Action::WriteWait { version, fullness } => {
                let name = member_names.wait();
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let mut lease = self.lease(
                    &name,
                    Some(&member_names.me),
                    version.clone(),
                    now.clone(),
                    now,
                    Some(*fullness),
                );
                self.count();
                let written = match version {
                    Some(_) => {
                        deadline(leases.replace(&name, &PostParams::default(), &lease)).await?
                    }
                    None => match deadline(leases.create(&PostParams::default(), &lease)).await {
                        // Left by this pod's previous memprobe: taken over at its version.
                        Err(Failure::Lost) => {
                            self.count();
                            let old = deadline(leases.get(&name)).await?;
                            lease.metadata.resource_version = old.metadata.resource_version;
                            self.count();
                            deadline(leases.replace(&name, &PostParams::default(), &lease)).await?
                        }
                        other => other?,
                    },
                };
                Ok(Answer::Written(version_of(&written)))
            }
            Action::DeleteWait => {
                self.count();
                match deadline(leases.delete(&member_names.wait(), &DeleteParams::default())).await
                {
                    Ok(_) | Err(Failure::Lost) => Ok(Answer::Deleted),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn names(&self) -> Names {
        let shared = lock(&self.shared);
        match &shared.member {
            Some(member) => member.names().clone(),
            None => Names {
                fleet: String::new(),
                me: self.pod.name.clone(),
            },
        }
    }

    /// A lease of this fleet's, as memprobe writes it.
    fn lease(
        &self,
        name: &str,
        holder: Option<&str>,
        version: Option<String>,
        acquired: MicroTime,
        renewed: MicroTime,
        fullness: Option<f64>,
    ) -> Lease {
        let names = self.names();
        let wait = fullness.is_some();
        let duration = {
            let shared = lock(&self.shared);
            match (&shared.member, wait) {
                (Some(member), true) => member.wait_duration(),
                _ => self.settings.lease,
            }
        };
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.pod.namespace.clone()),
                resource_version: version,
                labels: Some(BTreeMap::from([(FLEET_LABEL.to_string(), names.fleet)])),
                annotations: fullness
                    .map(|f| BTreeMap::from([(FULLNESS.to_string(), format!("{f:.4}"))])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
                acquire_time: Some(acquired),
                renew_time: Some(renewed),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Reads the pod's own metadata, once: its uid (for Events), its fleet and its labels.
    async fn read_pod(&mut self, client: &Client) -> Result<PodFacts, Failure> {
        if let Some(facts) = &self.pod_facts {
            return Ok(facts.clone());
        }
        let pods: Api<PodObject> = Api::namespaced(client.clone(), &self.pod.namespace);
        self.count();
        let meta = deadline(pods.get_metadata(&self.pod.name))
            .await
            .map_err(|e| match e {
                Failure::Lost => Failure::Other(format!(
                    "pod {}/{} not found: check --pod-name and --pod-namespace",
                    self.pod.namespace, self.pod.name
                )),
                other => other,
            })?
            .metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let fleet = match &self.settings.name {
            Some(name) => Ok(name.clone()),
            None => fleet_of(&self.pod.name, &meta),
        };
        let facts = PodFacts {
            uid: meta.uid.clone(),
            fleet,
            selector: selector(&labels),
        };
        lock(&self.shared).pod_uid = facts.uid.clone();
        self.pod_facts = Some(facts.clone());
        Ok(facts)
    }

    async fn send_event(&mut self, note: Note) {
        match self.event(&note).await {
            Ok(()) => {
                lock(&self.shared).events_sent += 1;
            }
            Err(why) => {
                let mut shared = lock(&self.shared);
                shared.failures += 1;
                if shared.failing.as_deref() != Some(&why) {
                    warn!("fleet: Event {} not sent: {why}", note.reason.as_str());
                }
                shared.failing = Some(why);
                shared.events_dropped += 1;
            }
        }
    }

    async fn event(&mut self, note: &Note) -> Result<(), String> {
        let client = self.client().await?;
        let facts = self.read_pod(&client).await.map_err(Failure::into_string)?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", self.pod.name, now.as_nanosecond())),
                namespace: Some(self.pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(note.reason.action().to_string()),
            reason: Some(note.reason.as_str().to_string()),
            note: Some(note.text.clone()),
            type_: Some(note.reason.kind().to_string()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(self.pod.name.clone()),
                namespace: Some(self.pod.namespace.clone()),
                uid: facts.uid.clone(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(crate::units::clip(&self.pod.name, 120)),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(client, &self.pod.namespace);
        self.count();
        deadline(events.create(&PostParams::default(), &event))
            .await
            .map_err(Failure::into_string)?;
        Ok(())
    }
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

/// A request with its deadline; 409 and 404 are [`Failure::Lost`].
async fn deadline<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(DEADLINE, request).await {
        Err(_) => Err(Failure::Other(format!(
            "no answer within {}",
            crate::units::Human(DEADLINE)
        ))),
        Ok(Ok(value)) => Ok(value),
        // 409 (Conflict at a stale version, AlreadyExists on a create) or 404: another
        // writer won, or the object is gone.
        Ok(Err(kube::Error::Api(status)))
            if status.code == 409
                || status.is_conflict()
                || status.is_already_exists()
                || status.is_not_found() =>
        {
            Err(Failure::Lost)
        }
        Ok(Err(kube::Error::Api(status))) => Err(Failure::Other(format!(
            "{} {}: {}",
            status.code,
            status.reason,
            crate::units::clip(&status.message, 200)
        ))),
        Ok(Err(e)) => Err(Failure::Other(crate::units::clip(&e.to_string(), 200))),
    }
}

fn version_of(lease: &Lease) -> String {
    lease.metadata.resource_version.clone().unwrap_or_default()
}

/// A listed lease as the fleet's rules see it.
fn seen(lease: &Lease) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    Seen {
        name: lease.metadata.name.clone().unwrap_or_default(),
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renewed: spec.renew_time.map(|t| t.0.to_string()),
        duration: Duration::from_secs(
            spec.lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30),
        ),
        version: version_of(lease),
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

fn describe(action: &Action) -> &'static str {
    match action {
        Action::Idle => "nothing",
        Action::ReadPod => "reading the pod",
        Action::CountPods => "counting the fleet's pods",
        Action::List => "listing the drain slots",
        Action::Take { .. } => "taking a drain slot",
        Action::Renew { .. } => "renewing the drain slot",
        Action::Release { .. } => "releasing the drain slot",
        Action::WriteWait { .. } => "writing the wait lease",
        Action::DeleteWait => "deleting the wait lease",
    }
}

/// Logs what changed the fleet's hold.
fn said(action: &Action, answer: &Answer) {
    match (action, answer) {
        (Action::Take { slot, .. }, Answer::Written(_)) => info!("fleet: took drain slot {slot}"),
        (Action::Take { slot, .. }, Answer::Lost) => {
            info!("fleet: drain slot {slot} went to another instance first")
        }
        (Action::Release { slot, .. }, _) => info!("fleet: released drain slot {slot}"),
        (Action::Renew { slot, .. }, Answer::Lost) => warn!(
            "fleet: drain slot {slot} was taken by another instance after it expired; \
             this drain goes on"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

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
        let s = seen(&lease);
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
        assert_eq!(seen(&released).holder, None, "an empty holder is none");
    }
}
