//! The HAProxy agent (`--agent-listen`): HAProxy's `agent-check` opens a TCP connection,
//! reads one line and the agent closes. The line is made from the published snapshot, never
//! from /proc:
//!
//! | state                       | line                     | HAProxy shows |
//! |-----------------------------|--------------------------|---------------|
//! | healthy, elevated           | `up ready 100%`, or the headroom weight | UP, weighted |
//! | elevated, waiting for a drain slot (`--fleet`) | `up ready 1%` | UP, weighted least |
//! | healthy or elevated but not ready (the fleet's start check refused) | `up drain` | DRAIN |
//! | draining, stalled, stopping | `up drain`               | DRAIN: no new sessions; established and sticky ones go on |
//! | recycle, lost, starting     | `down #<reason>`         | DOWN |
//!
//! Only `down` carries the reason (`#...`): HAProxy reads a comment after down, fail or
//! stopped alone.
//!
//! Draining is `drain`, not `down`: a DOWN server's persistent (sticky) clients are sent to
//! another server mid-call, a DRAIN server keeps them — exactly "accept no new sessions".
//!
//! With `--agent-weight headroom` the weight falls as memory fills: 100% up to half the
//! threshold, then linearly down to 1% at the threshold (and 1% over it, while elevated), so
//! the fuller instances of a fleet get fewer new sessions long before any of them drains.
//! An instance whose drain waits for a fleet's slot is weighted 1% whatever `--agent-weight`
//! says: it may not drain yet, so balancers send new calls elsewhere first, and it still
//! takes them when no other instance can.
//!
//! A connection is answered in the accept loop itself — one non-blocking write of a line of
//! at most a few hundred bytes, then close — so no connection is ever held and a flood costs
//! nothing to keep.

use tokio::net::TcpListener;

use super::Readout;
use crate::policy::State;
use crate::status::Status;

/// HAProxy's agent-check, when on (`--agent-listen`, `--agent-weight`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgentSettings {
    pub listen: std::net::SocketAddr,
    pub weight: AgentWeight,
}

/// How the weight of a ready instance is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentWeight {
    /// Always 100%.
    #[default]
    Fixed,
    /// 100% up to half the threshold, falling linearly to 1% at the threshold.
    Headroom,
}

/// The least weight a ready instance gets: 0% would stop new sessions as a drain does.
const MIN_WEIGHT: u8 = 1;

/// The weight, in percent, for `memory_bytes` under `threshold_bytes`.
pub fn headroom_weight(memory_bytes: u64, threshold_bytes: u64) -> u8 {
    let half = threshold_bytes / 2;
    if memory_bytes <= half {
        return 100;
    }
    if memory_bytes >= threshold_bytes || threshold_bytes == half {
        return MIN_WEIGHT;
    }
    let left = (threshold_bytes - memory_bytes) as f64 / (threshold_bytes - half) as f64;
    (left * 100.0).round().clamp(f64::from(MIN_WEIGHT), 100.0) as u8
}

/// The agent's line for a status (and whether memprobe is stopping).
pub fn line(status: &Status, weight: AgentWeight, stopping: bool) -> String {
    if stopping {
        return "up drain\n".to_string();
    }
    match status.state {
        // Not ready whatever the state (the fleet's start check refused): as /ready says.
        State::Healthy | State::Elevated if !status.ready => "up drain\n".to_string(),
        State::Healthy | State::Elevated => {
            let waiting = status.fleet.as_ref().is_some_and(|f| f.waiting);
            let percent = match (weight, &status.memory) {
                _ if waiting => MIN_WEIGHT,
                (AgentWeight::Headroom, Some(memory)) => {
                    headroom_weight(memory.deciding_bytes, status.threshold.bytes)
                }
                _ => 100,
            };
            format!("up ready {percent}%\n")
        }
        // No comment here: HAProxy reads a comment only after down, fail or stopped, and takes
        // the words of any other as commands.
        State::Draining | State::Stalled => "up drain\n".to_string(),
        State::Recycle | State::Lost | State::Starting => {
            format!("down #{}\n", comment(&status.reason))
        }
    }
}

/// A reason as an agent comment: one line, short.
fn comment(reason: &str) -> String {
    crate::units::clip(reason, 200)
}

/// Answers every connection on `listener` with the line for the latest snapshot; forever.
pub async fn serve(listener: TcpListener, readout: Readout, weight: AgentWeight) {
    let mut error_logged = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let snap = readout.latest();
                let stopping = readout.stopping();
                let text = line(&snap.status, weight, stopping);
                // A fresh socket's send buffer takes a short line whole; if not, the check is
                // simply missed, which HAProxy does not count against the server.
                let _ = stream.try_write(text.as_bytes());
            }
            Err(e) => {
                if !error_logged {
                    tracing::warn!("agent: accepting a connection failed: {e} (retrying)");
                    error_logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{MemoryStatus, ThresholdStatus};

    const MI: u64 = 1 << 20;

    fn status(state: State, memory_mib: u64) -> Status {
        Status {
            state,
            ready: state.ready(),
            reason: "rss 1.62 GiB over threshold 1.50 GiB for 5m".into(),
            memory: Some(MemoryStatus {
                deciding: crate::sources::MemoryKind::Rss,
                deciding_bytes: memory_mib * MI,
                sample: crate::sources::MemorySample::rss_only(memory_mib * MI),
                sampled_at: String::new(),
            }),
            threshold: ThresholdStatus {
                bytes: 1000 * MI,
                ..ThresholdStatus::default()
            },
            ..Status::default()
        }
    }

    #[test]
    fn an_instance_not_ready_whatever_its_state_is_drained_as_ready_says() {
        // The fleet's start check refused: /ready answers 503, and so does the agent.
        for state in [State::Healthy, State::Elevated] {
            let refused = Status {
                ready: false,
                ..status(state, 900)
            };
            assert_eq!(line(&refused, AgentWeight::Fixed, false), "up drain\n");
        }
    }

    #[test]
    fn each_state_has_its_line() {
        let fixed = AgentWeight::Fixed;
        assert_eq!(
            line(&status(State::Healthy, 900), fixed, false),
            "up ready 100%\n"
        );
        assert_eq!(
            line(&status(State::Elevated, 1200), fixed, false),
            "up ready 100%\n"
        );
        assert_eq!(
            line(&status(State::Draining, 1200), fixed, false),
            "up drain\n",
            "draining is DRAIN, not DOWN: sticky calls stay"
        );
        assert_eq!(
            line(&status(State::Stalled, 100), fixed, false),
            "up drain\n"
        );
        for s in [State::Recycle, State::Lost, State::Starting] {
            assert!(
                line(&status(s, 100), fixed, false).starts_with("down #"),
                "{s:?}"
            );
        }
        assert_eq!(
            line(&status(State::Healthy, 100), fixed, true),
            "up drain\n"
        );
    }

    #[test]
    fn a_reason_cannot_break_the_line() {
        let mut s = status(State::Lost, 0);
        s.reason = format!("no process named x\nup ready 100%{}", "y".repeat(1000));
        let text = line(&s, AgentWeight::Fixed, false);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.len() < 260);
    }

    #[test]
    fn the_headroom_weight_falls_from_half_the_threshold_to_the_threshold() {
        let t = 1000 * MI;
        assert_eq!(headroom_weight(0, t), 100);
        assert_eq!(headroom_weight(500 * MI, t), 100, "full weight up to half");
        assert_eq!(headroom_weight(750 * MI, t), 50, "halfway: half the weight");
        assert_eq!(headroom_weight(900 * MI, t), 20);
        assert_eq!(headroom_weight(t, t), 1, "never below 1%");
        assert_eq!(headroom_weight(2 * t, t), 1);
        let headroom = AgentWeight::Headroom;
        assert_eq!(
            line(&status(State::Healthy, 750), headroom, false),
            "up ready 50%\n"
        );
    }

    #[test]
    fn an_instance_waiting_for_a_drain_slot_is_weighted_least_whatever_the_weight_setting() {
        let waiting = |state, waiting| Status {
            fleet: Some(crate::status::FleetStatus {
                kind: "kubernetes",
                waiting,
                gate: Some("waiting for a drain slot: held by kms-1".into()),
                ..crate::status::FleetStatus::default()
            }),
            ..status(state, 400)
        };
        for weight in [AgentWeight::Fixed, AgentWeight::Headroom] {
            assert_eq!(
                line(&waiting(State::Elevated, true), weight, false),
                "up ready 1%\n",
                "{weight:?}: ready, but new calls go elsewhere first"
            );
            assert_eq!(
                line(&waiting(State::Elevated, false), weight, false),
                "up ready 100%\n",
                "{weight:?}: a slot held by another with no drain asked for changes nothing"
            );
            assert_eq!(
                line(&waiting(State::Draining, true), weight, false),
                "up drain\n",
                "{weight:?}: a drain is a drain"
            );
            assert_eq!(
                line(&waiting(State::Elevated, true), weight, true),
                "up drain\n",
                "{weight:?}: stopping wins"
            );
        }
    }
}
