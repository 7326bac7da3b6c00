//! The fleet: the instances of one server that fragment together, and must not all drain at
//! once. The monitor tells its member every transition and, after every step, what the
//! decider held back; the member answers with the [`Gate`] the next drains pass through.
//!
//! - [`Alone`] — an instance on its own (the default): the gate is always open, and nothing
//!   is asked of anybody.
//! - [`kubernetes`] — `--fleet kubernetes`: a drain budget on Leases (the rules are
//!   [`crate::policy::fleet`]'s), and the decisions as Kubernetes Events (also alone, with
//!   `--events`). Its requests run on a thread of their own, so no API call can hold up a
//!   step of the monitor or a probe.

pub mod api;
pub mod events;
pub mod kubernetes;
pub mod wire;

use std::time::Duration;

use crate::policy::fleet::Budget;
use crate::policy::{Gate, State, Transition};
use crate::status::FleetStatus;

/// What the monitor tells its member after each step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ask<'a> {
    pub state: State,
    /// The decider held a drain back at the gate: memory (or the quiet moment) asks for one.
    pub wants: bool,
    /// Memory over its limit, 0 to 1.
    pub fullness: f64,
    /// The decider's reason, for the Events.
    pub reason: &'a str,
}

/// A member of a fleet, as the monitor sees it.
pub trait Coordinator: Send {
    /// This instance's state changed; `requested` when an operator asked for the drain.
    fn told(&mut self, transition: &Transition, requested: bool);

    /// The server can no longer tear sessions down (`why`): said once per incarnation,
    /// before the drain it causes is told.
    fn stuck(&mut self, _why: &str) {}

    /// Why this instance must not take sessions whatever its state: the API server refused
    /// the fleet's start check (a configuration to fix, shown at once), until it passes.
    fn unready(&self) -> Option<String> {
        None
    }

    /// After each step: answers whether the next drains may start.
    fn step(&mut self, ask: Ask<'_>) -> Gate;

    /// What `/status` shows of the fleet, when there is one.
    fn status(&self) -> Option<FleetStatus> {
        None
    }
}

/// One instance, coordinating with nobody.
pub struct Alone;

impl Coordinator for Alone {
    fn told(&mut self, _transition: &Transition, _requested: bool) {}

    fn step(&mut self, _ask: Ask<'_>) -> Gate {
        Gate::Open
    }
}

/// `--fleet`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Off,
    Kubernetes,
}

/// The pod memprobe runs in, from the Downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
}

/// The fleet family's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    /// `--fleet-name`; by default the Deployment's (read from the pod's owner).
    pub name: Option<String>,
    pub budget: Budget,
    /// `--fleet-lease-duration`: a slot's `leaseDurationSeconds`.
    pub lease: Duration,
    /// `--events`: the decisions as Kubernetes Events (on with the fleet).
    pub events: bool,
    /// Needed with the fleet or the events on.
    pub pod: Option<Pod>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Off,
            name: None,
            budget: Budget::Instances(1),
            lease: DEFAULT_LEASE,
            events: false,
            pod: None,
        }
    }
}

/// A slot's lease duration by default: a dead holder's slot is free half a minute later.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// With the fleet on and no `--critical`, memory over this share of the limit recycles at
/// once: an instance waiting for a slot must still not be OOM-killed.
pub const CRITICAL_WITH_FLEET: f64 = 95.0;

impl Settings {
    /// Whether anything of this family talks to the API server.
    pub fn on(&self) -> bool {
        self.mode == Mode::Kubernetes || self.events
    }
}

/// The member these settings make: [`Alone`] unless the fleet or the events are on.
pub fn start(settings: &Settings, interval: Duration) -> Box<dyn Coordinator> {
    match (&settings.pod, settings.on()) {
        (Some(pod), true) => Box::new(kubernetes::Kubernetes::start(settings, pod, interval)),
        _ => Box::new(Alone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_the_fleet_and_the_events_off_nothing_talks_to_the_api_server() {
        let settings = Settings {
            pod: Some(Pod {
                name: "kms-0".into(),
                namespace: "media".into(),
            }),
            ..Settings::default()
        };
        assert!(!settings.on());
        let mut member = start(&settings, Duration::from_secs(5));
        assert!(member.status().is_none(), "alone: no fleet in /status");
        assert_eq!(member.step(Ask::default()), Gate::Open);
        let wants = Ask {
            wants: true,
            ..Ask::default()
        };
        assert_eq!(member.step(wants), Gate::Open, "alone, a drain never waits");
    }
}
