//! The quiet moment: restart an idle instance before its memory forces a drain at peak.
//!
//! Memory crosses the threshold under load, so a drain usually starts at the busiest hour and
//! waits for the longest call; the cheapest restart, an instance with nobody on it at 4 a.m.,
//! goes by unused. With `--recycle-when-idle-within D` (off by default), an instance that has
//! had zero sessions for `--min-drain`, and whose [forecast](crate::forecast) says the floor
//! crosses the threshold within D, is drained now.
//!
//! It drains rather than restarting on the spot: a ready instance may be handed a session at
//! any moment, so it first leaves rotation, and the decider's own rule restarts it once it has
//! had no session for `--min-drain` out of rotation — or, if a call slipped in, once that call
//! has ended. So the rule never acts with a session live, never without a forecast, and at
//! most once per incarnation.

use std::time::Duration;

use tokio::time::Instant;

use crate::forecast::Forecast;
use crate::policy::State;
use crate::units::Human;

/// The rule for one instance: whether it is time to drain at a quiet moment.
#[derive(Clone, Debug)]
pub struct QuietMoment {
    /// `--recycle-when-idle-within`: `None` leaves the rule off.
    within: Option<Duration>,
    min_drain: Duration,
    /// First sample of the current unbroken run with zero sessions.
    idle_since: Option<Instant>,
    /// Whether this incarnation has been drained by the rule already.
    used: bool,
}

impl QuietMoment {
    pub fn new(within: Option<Duration>, min_drain: Duration) -> Self {
        QuietMoment {
            within,
            min_drain,
            idle_since: None,
            used: false,
        }
    }

    /// A new incarnation: its history, and its one use of the rule, start over.
    pub fn new_incarnation(&mut self) {
        self.idle_since = None;
        self.used = false;
    }

    /// Records the session count at `now`; true when the rule could act if a forecast
    /// allowed: it is on, unused, and the instance has had no session for `--min-drain`.
    /// (The forecast costs more than this: ask it only then.)
    pub fn idle(&mut self, now: Instant, sessions: Option<u32>) -> bool {
        if sessions == Some(0) {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
        self.within.is_some() && !self.used && self.idle_for(now) >= self.min_drain
    }

    fn idle_for(&self, now: Instant) -> Duration {
        self.idle_since.map_or(Duration::ZERO, |t| now - t)
    }

    /// Whether to drain now, and why. `state` is the decider's; only a ready instance
    /// (healthy or elevated) is drained by this rule: any other is already out of rotation
    /// or not known to be running. Marks the rule used when it answers.
    pub fn decide(
        &mut self,
        now: Instant,
        state: State,
        forecast: Option<&Forecast>,
    ) -> Option<String> {
        let within = self.within?;
        if self.used || !state.ready() || self.idle_since.is_none() {
            return None;
        }
        let idle_for = self.idle_for(now);
        let forecast = forecast?;
        if idle_for < self.min_drain || forecast.eta > within {
            return None;
        }
        self.used = true;
        Some(format!(
            "quiet moment: no session for {}, and at this rate {} \
             (--recycle-when-idle-within {})",
            Human(idle_for),
            forecast,
            Human(within)
        ))
    }
}

impl QuietMoment {
    /// The drain it asked for was held back (the fleet had no slot for it): asked again at
    /// the next step, so the rule is not spent on a drain that never began.
    pub fn deferred(&mut self) {
        self.used = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const MIN_DRAIN: Duration = Duration::from_secs(30);

    fn crossing_in(eta: Duration) -> Forecast {
        Forecast {
            eta,
            earliest: eta / 2,
            latest: eta * 2,
            bytes_per_hour: 50.0 * 1024.0 * 1024.0,
            floor_bytes: 1024 * 1024 * 1024,
            spread_bytes: 0,
            floors: 100,
            span: 12 * HOUR,
            idle_floors: true,
        }
    }

    fn rule() -> (QuietMoment, Instant) {
        (QuietMoment::new(Some(12 * HOUR), MIN_DRAIN), Instant::now())
    }

    #[test]
    fn an_instance_idle_for_min_drain_and_due_within_d_drains() {
        let (mut q, t0) = rule();
        assert!(!q.idle(t0, Some(0)), "idle for no time yet");
        let t = t0 + MIN_DRAIN;
        assert!(q.idle(t, Some(0)), "idle for --min-drain: ask the forecast");
        let why = q
            .decide(t, State::Healthy, Some(&crossing_in(3 * HOUR)))
            .expect("a quiet-moment drain");
        assert!(
            why.starts_with(
                "quiet moment: no session for 30s, and at this rate over the threshold in about 3h"
            ),
            "{why}"
        );
    }

    #[test]
    fn never_with_a_session_live() {
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        q.idle(t0 + MIN_DRAIN, Some(1));
        assert_eq!(
            q.decide(t0 + MIN_DRAIN, State::Healthy, Some(&crossing_in(HOUR))),
            None,
            "a session live: no quiet moment"
        );
        q.idle(t0 + 2 * MIN_DRAIN, Some(0));
        assert_eq!(
            q.decide(t0 + 2 * MIN_DRAIN, State::Healthy, Some(&crossing_in(HOUR))),
            None,
            "the idle run starts again after the session: not yet --min-drain"
        );
        let (mut q, t0) = rule();
        q.idle(t0, None);
        q.idle(t0 + HOUR, None);
        assert_eq!(
            q.decide(t0 + HOUR, State::Healthy, Some(&crossing_in(HOUR))),
            None,
            "a session count unknown is not zero"
        );
    }

    #[test]
    fn never_without_a_forecast() {
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        q.idle(t0 + HOUR, Some(0));
        assert_eq!(
            q.decide(t0 + HOUR, State::Healthy, None),
            None,
            "no forecast, no quiet-moment drain"
        );
        assert!(
            q.decide(t0 + HOUR, State::Healthy, Some(&crossing_in(HOUR)))
                .is_some(),
            "asking without a forecast does not use the rule up"
        );
    }

    #[test]
    fn a_crossing_further_than_d_waits() {
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        q.idle(t0 + HOUR, Some(0));
        assert_eq!(
            q.decide(t0 + HOUR, State::Healthy, Some(&crossing_in(13 * HOUR))),
            None,
            "over the threshold in 13 h is beyond --recycle-when-idle-within 12h"
        );
    }

    #[test]
    fn at_most_once_per_incarnation() {
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        q.idle(t0 + HOUR, Some(0));
        let f = crossing_in(HOUR);
        assert!(q.decide(t0 + HOUR, State::Healthy, Some(&f)).is_some());
        assert!(
            !q.idle(t0 + 2 * HOUR, Some(0)),
            "used: no need to ask the forecast again"
        );
        assert_eq!(
            q.decide(t0 + 2 * HOUR, State::Healthy, Some(&f)),
            None,
            "once per incarnation"
        );
        q.new_incarnation();
        q.idle(t0 + 3 * HOUR, Some(0));
        q.idle(t0 + 4 * HOUR, Some(0));
        assert!(
            q.decide(t0 + 4 * HOUR, State::Healthy, Some(&f)).is_some(),
            "a new incarnation may use it again"
        );
    }

    #[test]
    fn only_a_ready_instance_is_drained_by_it() {
        for state in [
            State::Starting,
            State::Draining,
            State::Stalled,
            State::Recycle,
            State::Lost,
        ] {
            let (mut q, t0) = rule();
            q.idle(t0, Some(0));
            q.idle(t0 + HOUR, Some(0));
            assert_eq!(
                q.decide(t0 + HOUR, state, Some(&crossing_in(HOUR))),
                None,
                "{state:?} is out of rotation already or not running"
            );
        }
    }

    #[test]
    fn off_by_default() {
        let mut q = QuietMoment::new(None, MIN_DRAIN);
        let t0 = Instant::now();
        q.idle(t0, Some(0));
        assert!(!q.idle(t0 + HOUR, Some(0)), "off: never asks the forecast");
        assert_eq!(
            q.decide(t0 + HOUR, State::Healthy, Some(&crossing_in(HOUR))),
            None,
            "without --recycle-when-idle-within the rule never acts"
        );
    }
}
