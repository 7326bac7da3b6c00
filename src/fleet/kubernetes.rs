//! `--fleet kubernetes` and `--events`: the fleet's rules ([`Member`]) carried out on the
//! API server, and the decisions sent as Events.
//!
//! The monitor's side ([`Kubernetes`]) only locks a mutex: it writes what the instance needs
//! and reads the gate. Every request is made by `memprobe-fleet` ([`super::api`]), a process
//! memprobe starts next to its own executable for the start check and whenever a request is
//! due (an instance that stays healthy stops it after the check), and talks to from a thread of its own: an API server
//! that hangs, a kubeconfig on a stuck mount or a slow TLS handshake can delay a drain, never
//! a step or a probe. A child that stops, breaks the protocol or gives no answer within
//! [`WATCHDOG`] is an API failure: killed with its process group, started again after a
//! backoff, its reason shown in `/status`'s `fleet.api`.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::api::DEADLINE;
use super::events::{Limiter, Note, Teller};
use super::wire::{self, Checked, Hello, Reply, Request};
use super::{Ask, Coordinator, Mode, Pod, Settings};
use crate::policy::fleet::{
    Action, Answer, Budget, GIVE_UP_AFTER_RECYCLE, Member, Names, Need, Wait,
};
use crate::policy::{Gate, State, Transition};
use crate::status::FleetStatus;
use crate::units::Human;

/// How long memprobe waits for the child's answer to one lease request (which may take a
/// few requests of [`DEADLINE`] each) before it takes the child for hung.
pub const WATCHDOG: Duration = Duration::from_secs(60);
/// How often the fleet's thread looks for work.
const BEAT: Duration = Duration::from_millis(250);
/// Events waiting to be sent, at most; more are dropped (and counted).
const QUEUE: usize = 32;
/// The child is started again after a failure once this has passed, doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A start check that did not pass is made again this long after.
pub const CHECK_AGAIN: Duration = Duration::from_secs(30);

/// The start check: that memprobe can read its pod and, with the fleet on, its Leases.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    NotYet,
    Passed,
    /// Refused by the API server before it ever passed: a configuration to fix. The pod is
    /// not ready until it passes, so a rollout with a broken Role stops at its first pod.
    Refused(String),
    /// No answer: an outage, which changes nothing but the fleet's own gate.
    Failed(String),
}

/// What the monitor's side and the fleet's thread share.
#[derive(Debug)]
struct Shared {
    member: Option<Member>,
    need: Need,
    requests: u64,
    failures: u64,
    events_sent: u64,
    events_dropped: u64,
    /// The last failure of an Event or a request, while the API server fails.
    failing: Option<String>,
    asked: bool,
    check: Check,
    /// When the start check is made (again).
    check_at: Instant,
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
            requests: 0,
            failures: 0,
            events_sent: 0,
            events_dropped: 0,
            failing: None,
            asked: false,
            check: Check::NotYet,
            check_at: Instant::now(),
        }));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let worker = Worker {
            shared: Arc::clone(&shared),
            settings: settings.clone(),
            pod: pod.clone(),
            child: None,
            next_id: 0,
            down: None,
            backoff: FIRST_BACKOFF,
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

    fn stuck(&mut self, why: &str) {
        let notes = self.teller.stuck(why);
        self.send(notes);
    }

    fn unready(&self) -> Option<String> {
        match &lock(&self.shared).check {
            Check::Refused(why) => Some(format!("the fleet's start check was refused: {why}")),
            _ => None,
        }
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
            api_up: shared.check == Check::Passed && failing.is_none(),
            check: match &shared.check {
                Check::NotYet => "not yet".to_string(),
                Check::Passed => "passed".to_string(),
                Check::Refused(why) => format!("refused: {why}"),
                Check::Failed(why) => format!("failed: {why}"),
            },
            api: match (&shared.check, failing, shared.asked) {
                (Check::Refused(why), _, _) => format!("refused: {why}"),
                (_, Some(why), _) => format!("unreachable: {why}"),
                (_, None, true) => "reachable".to_string(),
                (Check::Passed, None, false) => "reachable".to_string(),
                (_, None, false) => "not asked yet".to_string(),
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

/// The fleet's thread: asks the child for each request the rules make, and hands it the
/// Events.
struct Worker {
    shared: Arc<Mutex<Shared>>,
    settings: Settings,
    pod: Pod,
    child: Option<Child>,
    next_id: u64,
    /// After the child failed: why, and when it may be started again.
    down: Option<(String, Instant)>,
    backoff: Duration,
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
                let check_due = {
                    let shared = lock(&self.shared);
                    shared.check != Check::Passed && Instant::now() >= shared.check_at
                };
                if check_due {
                    self.start_check().await;
                }
                // Nothing more is asked of an API server that refused the check: its answer
                // would be the same refusal.
                if matches!(lock(&self.shared).check, Check::NotYet | Check::Refused(_)) {
                    continue;
                }
                // The lease request that is due (a renewal above all) goes first; the Events
                // are only handed to the child's own lane after it, never waited for.
                let action = {
                    let mut shared = lock(&self.shared);
                    let need = shared.need;
                    match &mut shared.member {
                        Some(member) => member.next(Instant::now(), need),
                        None => Action::Idle,
                    }
                };
                if action != Action::Idle {
                    self.lease_request(action).await;
                }
                loop {
                    match events.try_recv() {
                        Ok(note) => self.tell(note).await,
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            }
        });
    }

    /// The start check, made by the child. Once it passed, a child with nothing else to do
    /// is stopped: an instance that stays healthy keeps no second process.
    async fn start_check(&mut self) {
        self.next_id += 1;
        let id = self.next_id;
        let request = Request::Check {
            id,
            leases: self.settings.mode == Mode::Kubernetes,
        };
        let outcome = match self.child().await {
            Err(why) => Err(why),
            Ok(child) => child.ask(id, &request).await,
        };
        let checked = match outcome {
            Ok(Reply::Check { checked, .. }) => {
                self.down = None;
                self.backoff = FIRST_BACKOFF;
                checked
            }
            Ok(_) => Checked::Failed("memprobe-fleet answered another request".to_string()),
            Err(why) => {
                if self.child.is_some() {
                    self.lost(why.clone());
                }
                Checked::Failed(why)
            }
        };
        let mut shared = lock(&self.shared);
        let before = std::mem::replace(&mut shared.check, Check::NotYet);
        shared.check = match checked {
            Checked::Passed => {
                info!("fleet: start check passed: the pod and its Leases can be read");
                Check::Passed
            }
            Checked::Refused(why) => {
                if before != Check::Refused(why.clone()) {
                    error!(
                        "fleet: the API server refused memprobe's start check: {why}; this pod \
                         is not ready until it passes (checked again every {})",
                        Human(CHECK_AGAIN)
                    );
                }
                Check::Refused(why)
            }
            Checked::Failed(why) => {
                if before != Check::Failed(why.clone()) {
                    warn!(
                        "fleet: start check failed: {why}; checked again every {} (no drain \
                         starts through the fleet until the API server answers)",
                        Human(CHECK_AGAIN)
                    );
                }
                Check::Failed(why)
            }
        };
        shared.check_at = Instant::now() + CHECK_AGAIN;
        let idle = shared.check == Check::Passed && !shared.need.wants;
        drop(shared);
        if idle {
            self.child = None;
        }
    }

    async fn lease_request(&mut self, action: Action) {
        let (answer, fleet) = self.ask(&action).await;
        let mut shared = lock(&self.shared);
        shared.asked = true;
        if let Answer::Failed(why) = &answer {
            shared.failures += 1;
            if shared.failing.as_deref() != Some(why.as_str()) {
                warn!("fleet: {} failed: {why}", describe(&action));
            }
            shared.failing = Some(why.clone());
        } else {
            if shared.failing.take().is_some() {
                info!("fleet: the API server answers again");
            }
            said(&action, &answer);
            if let (Action::Release { slot, .. }, Some(member)) = (&action, &shared.member)
                && member.gave_up()
            {
                warn!(
                    "fleet: gave drain slot {slot} up: the server is not healthy {} after \
                     its recycle; the other instances may drain",
                    Human(GIVE_UP_AFTER_RECYCLE)
                );
            }
        }
        if let (Action::ReadPod, Some(Ok(fleet))) = (&action, fleet)
            && let Some(member) = &mut shared.member
        {
            member.set_fleet(fleet);
        }
        if let Some(member) = &mut shared.member {
            member.answered(Instant::now(), answer);
        }
    }

    /// The child, started if it is not running and may be.
    async fn child(&mut self) -> Result<&mut Child, String> {
        if let Some(child) = &mut self.child
            && let Some(gone) = child.exited()
        {
            self.lost(gone);
        }
        if self.child.is_none() {
            if let Some((why, until)) = &self.down
                && Instant::now() < *until
            {
                return Err(why.clone());
            }
            let hello = Hello {
                namespace: self.pod.namespace.clone(),
                pod: self.pod.name.clone(),
                fleet_name: self.settings.name.clone(),
                parent: std::process::id(),
            };
            match Child::start(&hello, Arc::clone(&self.shared)).await {
                Ok(child) => self.child = Some(child),
                Err(why) => {
                    self.lost(why.clone());
                    return Err(why);
                }
            }
        }
        self.child
            .as_mut()
            .ok_or_else(|| "memprobe-fleet is not running".to_string())
    }

    /// The child failed: it is stopped (with its group) and started again after a backoff.
    fn lost(&mut self, why: String) {
        self.child = None;
        self.down = Some((why, Instant::now() + self.backoff));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// One lease request, answered by the child within [`WATCHDOG`] or failed.
    async fn ask(&mut self, action: &Action) -> (Answer, Option<Result<String, String>>) {
        let (names, duration) = {
            let shared = lock(&self.shared);
            match &shared.member {
                Some(member) => {
                    let duration = match action {
                        Action::WriteWait { .. } => member.wait_duration(),
                        _ => self.settings.lease,
                    };
                    (member.names().clone(), duration)
                }
                None => return (Answer::Pod, None),
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        let request = Request::Lease {
            id,
            action: action.clone(),
            fleet: names.fleet,
            me: names.me,
            duration_secs: duration.as_secs(),
        };
        let outcome = match self.child().await {
            Err(why) => return (Answer::Failed(why), None),
            Ok(child) => child.ask(id, &request).await,
        };
        match outcome {
            Ok(Reply::Lease { answer, fleet, .. }) => {
                self.down = None;
                self.backoff = FIRST_BACKOFF;
                (answer, fleet)
            }
            Ok(_) => (
                Answer::Failed("memprobe-fleet answered another request".to_string()),
                None,
            ),
            Err(why) => {
                self.lost(why.clone());
                (Answer::Failed(why), None)
            }
        }
    }

    /// Hands an Event to the child; its outcome is counted when the child answers.
    async fn tell(&mut self, note: Note) {
        self.next_id += 1;
        let request = Request::Event {
            id: self.next_id,
            reason: note.reason.as_str().to_string(),
            kind: note.reason.kind().to_string(),
            action: note.reason.action().to_string(),
            note: note.text,
        };
        let sent = match self.child().await {
            Err(why) => Err(why),
            Ok(child) => child.send(&request).await,
        };
        if let Err(why) = sent {
            if self.child.is_some() {
                self.lost(why.clone());
            }
            let mut shared = lock(&self.shared);
            shared.failures += 1;
            shared.events_dropped += 1;
            if shared.failing.as_deref() != Some(why.as_str()) {
                warn!("fleet: Event {} not sent: {why}", note.reason.as_str());
            }
            shared.failing = Some(why);
        }
    }
}

/// A running `memprobe-fleet`, in a process group of its own; dropped, it is killed with
/// its group.
struct Child {
    process: tokio::process::Child,
    group: Option<nix::unistd::Pid>,
    stdin: tokio::process::ChildStdin,
    leases: tokio::sync::mpsc::Receiver<Reply>,
    reader: tokio::task::JoinHandle<()>,
}

impl Child {
    async fn start(hello: &Hello, shared: Arc<Mutex<Shared>>) -> Result<Child, String> {
        let exe = executable()?;
        let mut process = tokio::process::Command::new(&exe)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let group = process
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(nix::unistd::Pid::from_raw);
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(format!("cannot talk to {}", exe.display()));
        };
        let (replies, leases) = tokio::sync::mpsc::channel(4);
        let reader = tokio::spawn(read_replies(stdout, replies, shared));
        let mut child = Child {
            process,
            group,
            stdin,
            leases,
            reader,
        };
        child.write(&wire::line(hello)).await?;
        info!("fleet: started {}", exe.display());
        Ok(child)
    }

    /// Why the child is gone, if it is.
    fn exited(&mut self) -> Option<String> {
        match self.process.try_wait() {
            Ok(Some(status)) => Some(format!("memprobe-fleet stopped ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("memprobe-fleet cannot be watched: {e}")),
        }
    }

    async fn write(&mut self, line: &[u8]) -> Result<(), String> {
        let written = tokio::time::timeout(DEADLINE, async {
            self.stdin.write_all(line).await?;
            self.stdin.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("memprobe-fleet stopped reading: {e}")),
            Err(_) => Err(format!(
                "memprobe-fleet took no request within {}",
                Human(DEADLINE)
            )),
        }
    }

    async fn send(&mut self, request: &Request) -> Result<(), String> {
        self.write(&wire::line(request)).await
    }

    /// A request of the lease lane (a lease request or the start check), answered.
    async fn ask(&mut self, id: u64, request: &Request) -> Result<Reply, String> {
        self.send(request).await?;
        let deadline = Instant::now() + WATCHDOG;
        loop {
            match tokio::time::timeout_at(deadline, self.leases.recv()).await {
                Ok(Some(
                    reply @ (Reply::Lease { id: answered, .. } | Reply::Check { id: answered, .. }),
                )) if answered == id => {
                    return Ok(reply);
                }
                // An answer to an earlier request, given up on.
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(self
                        .exited()
                        .unwrap_or_else(|| "memprobe-fleet stopped answering".to_string()));
                }
                Err(_) => {
                    return Err(format!(
                        "memprobe-fleet gave no answer within {}: stopped, started again",
                        Human(WATCHDOG)
                    ));
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(group) = self.group {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The child's executable: `memprobe-fleet`, next to memprobe's own.
fn executable() -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot find memprobe's own executable: {e}"))?;
    let child = me.with_file_name(super::api::EXECUTABLE);
    if !child.is_file() {
        return Err(format!(
            "{} not found: the fleet and the Events need it next to {} (the image has both)",
            child.display(),
            me.display()
        ));
    }
    Ok(child)
}

/// Reads the child's answers: an Event's is counted here, a lease request's handed on.
async fn read_replies(
    stdout: tokio::process::ChildStdout,
    leases: tokio::sync::mpsc::Sender<Reply>,
    shared: Arc<Mutex<Shared>>,
) {
    let mut stdout = tokio::io::BufReader::new(stdout);
    loop {
        let reply = match wire::read::<Reply>(&mut stdout, wire::MAX_REPLY_LINE).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(e) => {
                warn!("fleet: memprobe-fleet said something unreadable: {e}");
                return;
            }
        };
        match reply {
            Reply::Lease { requests, .. } | Reply::Check { requests, .. } => {
                lock(&shared).requests += u64::from(requests);
                if leases.send(reply).await.is_err() {
                    return;
                }
            }
            Reply::Event {
                requests,
                failed,
                dropped,
                ..
            } => {
                let mut shared = lock(&shared);
                shared.requests += u64::from(requests);
                match (failed, dropped) {
                    (_, true) => shared.events_dropped += 1,
                    (Some(why), _) => {
                        shared.failures += 1;
                        shared.events_dropped += 1;
                        if shared.failing.as_deref() != Some(why.as_str()) {
                            warn!("fleet: an Event was not sent: {why}");
                        }
                        shared.failing = Some(why);
                    }
                    (None, false) => shared.events_sent += 1,
                }
            }
        }
    }
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
