//! Janus's own drain switch, following memprobe's decision (`--janus-drain-switch`, on by
//! default with `--janus-url`).
//!
//! When memprobe drains (or recycles) Janus, it also sends `accept_new_sessions` with
//! `accept:false`: a client that reaches the instance anyway — a stale DNS entry, a sticky
//! balancer — gets Janus's 472 instead of a session on a doomed instance, while the sessions
//! in progress go on. A restarted Janus accepts again by itself (a new incarnation). If
//! memprobe itself restarts while Janus is not accepting, the two are made consistent the
//! safe way: the drain is taken over, as a drain requested by `janus`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::policy::State;
use crate::sources::ServerReport;
use crate::sources::janus::DrainSwitch;
use crate::sources::operator::{Request, Requests};
use crate::status::Snapshot;

pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    switch: DrainSwitch,
    requests: Requests,
) {
    // The incarnation switched off, and whether the switch was read at start.
    let mut switched_for: Option<u64> = None;
    let mut adopted = false;
    loop {
        let (state, incarnation, accepting) = {
            let snap = snapshots.borrow_and_update();
            let accepting = match &snap.status.server {
                Some(ServerReport::Janus(view)) if view.connected => view.accepting_new_sessions,
                _ => None,
            };
            (snap.status.state, snap.status.incarnation, accepting)
        };
        match (state, accepting) {
            (State::Draining | State::Recycle, Some(true)) if switched_for != Some(incarnation) => {
                switched_for = Some(incarnation);
                switch.set_accepting(false);
            }
            (State::Healthy | State::Elevated, Some(false)) if !adopted => {
                adopted = true;
                tracing::info!("janus is not accepting new sessions: taking that drain over");
                let _ = requests.ask(Request::Drain, "janus").await;
            }
            (_, Some(_)) => adopted = true,
            _ => {}
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
