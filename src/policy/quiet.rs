//! The quiet moment: restart an idle instance before its memory forces a drain at peak.
//!
//! Memory crosses the threshold under load, so a drain usually starts at the busiest hour and
//! waits for the longest call; the cheapest restart, an instance with nobody on it at 4 a.m.,
//! goes by unused. With `--recycle-when-idle-within D` (48 hours by default), an instance that has
//! had zero sessions for `--min-drain`, and whose [forecast](crate::forecast) says the floor
//! crosses the threshold within D, is drained now.
//!
//! It drains rather than restarting on the spot: a ready instance may be handed a session at
//! any moment, so it first leaves rotation, and the decider's own rule restarts it once it has
//! had no session for `--min-drain` out of rotation — or, if a call slipped in, once that call
//! has ended. So the rule never acts with a session live, never without a forecast, and at
//! most once per incarnation.
//!
//! Nor on a rise that is not a ratchet: the forecast gives none for memory that levels off
//! (a warm-up) or whose rise does not hold across the window, and the rule does not act on
//! one drawn since the floor fell back (a cache trimmed at midnight). A server whose memory
//! levels off under the threshold is never restarted for it.

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
    /// Two looks further apart than this mean memprobe itself was not running in between:
    /// the idle run starts again from the look after the gap (`Policy::max_gap`).
    max_gap: Duration,
    /// First sample of the current unbroken run with zero sessions.
    idle_since: Option<Instant>,
    /// The last look at the session count.
    last_look: Option<Instant>,
    /// Whether this incarnation has been drained by the rule already.
    used: bool,
}

impl QuietMoment {
    pub fn new(within: Option<Duration>, min_drain: Duration, max_gap: Duration) -> Self {
        QuietMoment {
            within,
            min_drain,
            max_gap,
            idle_since: None,
            last_look: None,
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
        let previous = self.last_look.replace(now);
        if previous.is_some_and(|at| now.saturating_duration_since(at) > self.max_gap) {
            // memprobe was not running: a session may have come and gone meanwhile.
            self.idle_since = None;
        }
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
        // A rise since the floor fell back is no evidence of a ratchet: the floor came back
        // once, and may again (a cache trimmed every night).
        if idle_for < self.min_drain || forecast.eta > within || forecast.fell_back {
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
    /// Long, so that the tests may look an hour apart; the gap's own test looks further.
    const MAX_GAP: Duration = Duration::from_secs(3 * 3600);

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
            fell_back: false,
        }
    }

    fn rule() -> (QuietMoment, Instant) {
        (
            QuietMoment::new(Some(12 * HOUR), MIN_DRAIN, MAX_GAP),
            Instant::now(),
        )
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
    fn memprobes_own_pause_starts_the_idle_run_again() {
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        // memprobe stopped for four hours (SIGSTOP, a frozen cgroup, a suspended VM): a
        // session may have come and gone unseen.
        let after = t0 + 4 * HOUR;
        assert!(
            !q.idle(after, Some(0)),
            "the idle run starts again from the look after the gap"
        );
        assert_eq!(
            q.decide(after, State::Healthy, Some(&crossing_in(HOUR))),
            None
        );
        assert!(
            q.idle(after + MIN_DRAIN, Some(0)),
            "idle for --min-drain since the gap"
        );
        let (mut q, t0) = rule();
        let mut t = t0;
        while t < t0 + MIN_DRAIN {
            q.idle(t, Some(0));
            t += Duration::from_secs(10);
        }
        assert!(q.idle(t, Some(0)), "looks 10 s apart are no gap");
        let (mut q, t0) = rule();
        q.idle(t0, Some(0));
        assert!(
            q.idle(t0 + MAX_GAP, Some(0)),
            "a look exactly --max-gap later is no gap"
        );
    }

    /// What the rule does over 30 hours of an idle instance whose memory (MiB) follows
    /// `shape(hours)`, a sample a minute with a few MiB of noise, under a 1000 MiB threshold
    /// and `--recycle-when-idle-within 12h`, on the real forecast: the hour it drains, if any.
    fn drains_at(shape: impl Fn(f64) -> f64) -> Option<f64> {
        use crate::forecast::{History, Sample, Settings};
        const MI: f64 = 1024.0 * 1024.0;
        let (mut q, t0) = rule();
        let mut history = History::new(Settings::DEFAULT);
        for minute in 0..=30 * 60u64 {
            let h = minute as f64 / 60.0;
            let noise = (minute * 7919 % 13) as f64 / 2.0 - 3.0;
            let at = Duration::from_secs(minute * 60);
            history.push(Sample {
                at,
                memory_bytes: ((shape(h) + noise) * MI) as u64,
                sessions: Some(0),
                incarnation: 1,
            });
            let now = t0 + at;
            if minute % 10 != 0 || !q.idle(now, Some(0)) {
                continue;
            }
            let forecast = history.forecast(1000 * 1024 * 1024).ok();
            if q.decide(now, State::Healthy, forecast.as_ref()).is_some() {
                return Some(h);
            }
        }
        None
    }

    #[test]
    fn memory_that_levels_off_or_comes_back_is_never_a_quiet_moment() {
        // From 200 MiB, rising 175 MiB/h at first and ever more slowly (the rule drained
        // both at 6 h, the first moment the forecast had history enough).
        let warm_up_to = |top: f64| move |h: f64| top - (top - 200.0) * (-h / 4.0).exp();
        assert_eq!(
            drains_at(warm_up_to(900.0)),
            None,
            "a warm-up levelling at 900 MiB under a 1000 MiB threshold is never drained"
        );
        assert_eq!(
            drains_at(warm_up_to(950.0)),
            None,
            "nor one levelling at 950 MiB"
        );
        // Started at 10:00; a cache grows 15 MiB/h over 400 MiB, to 760 MiB at midnight,
        // when it is trimmed (the rule drained this at 18.5 h, 4.5 h after the trim).
        let daily_cache = |h: f64| 400.0 + 15.0 * ((h + 10.0) % 24.0);
        assert_eq!(
            drains_at(daily_cache),
            None,
            "a daily cache trimmed at midnight is no ratchet"
        );
        // Started at 18:00; 25 MiB/h over 150 MiB: the trim looks like a restart memprobe
        // missed, and only the rise since is drawn (drained at 28 h without the rule).
        let daily_cache_on_little = |h: f64| 150.0 + 25.0 * ((h + 18.0) % 24.0);
        assert_eq!(
            drains_at(daily_cache_on_little),
            None,
            "nor is a rise since memory fell back"
        );
        assert_eq!(drains_at(|_| 800.0), None, "flat memory never is");
    }

    #[test]
    fn a_true_ratchet_drains_at_a_quiet_moment() {
        let ratchet = |h: f64| 300.0 + 40.0 * h;
        let at = drains_at(ratchet).expect("a ratchet is drained before it crosses");
        assert!(
            (6.0..17.5).contains(&at),
            "once the forecast has 6 h of history, within 12 h of the crossing at 17.5 h: {at}"
        );
    }

    #[test]
    fn off_by_default() {
        let mut q = QuietMoment::new(None, MIN_DRAIN, MAX_GAP);
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
