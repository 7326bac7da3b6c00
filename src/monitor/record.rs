//! What the monitor keeps of what happened, for `/status`, `/metrics` and the page: the
//! counters, the last transitions, the recent samples, the memory the server kept while idle,
//! the recycle action's last run, and which things were already said once in the log.
//!
//! Pure bookkeeping: it is told what happened, with the wall-clock time when that matters,
//! and answers whether something is new enough to be logged. The loop decides nothing here.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::forecast::{self, Forecast, History, NoForecast};
use crate::policy::Transition;
use crate::sources::TargetStatus;
use crate::sources::operator::ActionRecord;
use crate::sources::proc::allocator::Allocator;
use crate::status::{Counters, MAX_POINTS, Point, TransitionRecord};

/// How many transitions `/status` keeps.
pub const TRANSITIONS_KEPT: usize = 32;

pub struct Record {
    counters: Counters,
    transitions: VecDeque<TransitionRecord>,
    /// When the current state began.
    since: SystemTime,
    points: VecDeque<Point>,
    points_kept: usize,
    /// The deciding figure at the last sample taken with zero sessions.
    idle_memory: Option<u64>,
    recycle_action: Option<ActionRecord>,
    glibc_warned: bool,
    /// The last sample error and the last "not found" reason, said once each until they
    /// change.
    last_error: Option<String>,
    not_found: Option<String>,
    /// The floors the forecast is drawn through, and the last forecast with the bucket and
    /// threshold it was made for: one forecast per bucket, not per step.
    floors: History,
    forecast: Option<(u128, u64, Result<Forecast, NoForecast>)>,
}

impl Record {
    /// A record whose history covers `history` at one sample per `interval`, and whose
    /// forecast is cut by `forecast`.
    pub fn new(
        history: Duration,
        interval: Duration,
        forecast: forecast::Settings,
        now: SystemTime,
    ) -> Self {
        Record {
            counters: Counters::default(),
            transitions: VecDeque::with_capacity(TRANSITIONS_KEPT),
            since: now,
            points: VecDeque::new(),
            points_kept: points_for(history, interval),
            idle_memory: None,
            recycle_action: None,
            glibc_warned: false,
            last_error: None,
            not_found: None,
            floors: History::new(forecast),
            forecast: None,
        }
    }

    /// A transition, counted by the state entered and kept among the last ones.
    pub fn transition(&mut self, tr: &Transition, at: SystemTime) {
        *self.counters.transitions_total.entry(tr.to).or_default() += 1;
        self.since = at;
        if self.transitions.len() == TRANSITIONS_KEPT {
            self.transitions.pop_front();
        }
        self.transitions.push_back(TransitionRecord {
            at: crate::units::timestamp(at),
            from: tr.from,
            to: tr.to,
            reason: tr.reason.clone(),
        });
    }

    /// A sample taken `at` since the monitor started: counted, kept for the page and for the
    /// forecast; with no session at all, its figure is the memory the server keeps when idle.
    pub fn sampled(&mut self, point: Point, sessions_known: Option<u32>, at: Duration) {
        self.floors.push(forecast::Sample {
            at,
            memory_bytes: point.memory_bytes,
            sessions: sessions_known,
            incarnation: u64::from(point.incarnation),
        });
        self.counters.samples_total += 1;
        self.last_error = None;
        if sessions_known == Some(0) {
            self.idle_memory = Some(point.memory_bytes);
        }
        if self.points.len() >= self.points_kept {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// A sample failed: counted; `true` when this error is new and worth a log line.
    pub fn sample_failed(&mut self, message: String) -> bool {
        self.counters.sample_errors_total += 1;
        if self.last_error.as_deref() == Some(message.as_str()) {
            return false;
        }
        self.last_error = Some(message);
        true
    }

    /// No target, for this reason: `true` when the reason is new and worth a log line.
    pub fn not_found(&mut self, why: &str) -> bool {
        if self.not_found.as_deref() == Some(why) {
            return false;
        }
        self.not_found = Some(why.to_string());
        true
    }

    /// A target was found: the next "not found" is news again.
    pub fn found(&mut self, restart: bool) {
        self.not_found = None;
        // The last forecast was of the old incarnation: drawn again, of this one, at once, not
        // at the next bucket (a fresh, idle server must not be drained on its old trend).
        self.forecast = None;
        if restart {
            self.counters.target_restarts_total += 1;
        }
    }

    /// `true` once per run, for a KMS found on the malloc that fragments.
    pub fn warn_of_glibc(&mut self, target: &TargetStatus) -> bool {
        let kms = target.name.starts_with("kurento-media-s");
        if kms && target.allocator == Allocator::Glibc && !self.glibc_warned {
            self.glibc_warned = true;
            return true;
        }
        false
    }

    pub fn drain_requested(&mut self) {
        self.counters.drain_requests_total += 1;
    }

    pub fn recycle_action_ran(&mut self, record: ActionRecord) {
        *self
            .counters
            .recycle_actions_total
            .entry(record.result)
            .or_default() += 1;
        self.recycle_action = Some(record);
    }

    /// When the memory kept will cross `threshold_bytes`, as of the sample taken `at`; drawn
    /// again once per bucket of the forecast, or when the threshold changes. `None` before
    /// any sample.
    pub fn forecast(
        &mut self,
        threshold_bytes: u64,
        at: Duration,
    ) -> Option<&Result<Forecast, NoForecast>> {
        let bucket = at.as_nanos() / self.floors.settings().bucket.as_nanos().max(1);
        let fresh =
            matches!(&self.forecast, Some((b, t, _)) if *b == bucket && *t == threshold_bytes);
        if !fresh && self.counters.samples_total > 0 {
            let drawn = forecast::forecast(
                &self.floors.samples(),
                threshold_bytes,
                self.floors.settings(),
            );
            self.forecast = Some((bucket, threshold_bytes, drawn));
        }
        self.forecast.as_ref().map(|(_, _, f)| f)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// The last transitions, oldest first.
    pub fn transitions(&self) -> Vec<TransitionRecord> {
        self.transitions.iter().cloned().collect()
    }

    /// The recent samples, oldest first.
    pub fn points(&self) -> std::sync::Arc<[Point]> {
        self.points.iter().copied().collect()
    }

    pub fn idle_memory(&self) -> Option<u64> {
        self.idle_memory
    }

    pub fn recycle_action(&self) -> Option<&ActionRecord> {
        self.recycle_action.as_ref()
    }
}

/// How many samples `history` covers at one per `interval`, within [1, MAX_POINTS].
fn points_for(history: Duration, interval: Duration) -> usize {
    let per = interval.as_secs_f64().max(0.001);
    ((history.as_secs_f64() / per).ceil() as usize).clamp(1, MAX_POINTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::State;

    const SECOND: Duration = Duration::from_secs(1);

    fn record() -> Record {
        Record::new(
            10 * SECOND,
            SECOND,
            forecast::Settings::DEFAULT,
            SystemTime::UNIX_EPOCH,
        )
    }

    fn point(memory_bytes: u64) -> Point {
        Point {
            at_ms: 0,
            memory_bytes,
            rss_bytes: memory_bytes,
            anon_bytes: None,
            sessions: None,
            live_bytes: None,
            threads: None,
            state: State::Healthy,
            incarnation: 1,
        }
    }

    fn transition(to: State) -> Transition {
        Transition {
            from: State::Healthy,
            to,
            reason: format!("to {}", to.as_str()),
        }
    }

    fn target(name: &str, allocator: Allocator) -> TargetStatus {
        TargetStatus {
            pid: Some(42),
            name: name.into(),
            start_time: None,
            found_by: "--pid 42".into(),
            allocator,
            handle: None,
        }
    }

    #[test]
    fn the_history_covers_the_window_asked_within_bounds() {
        assert_eq!(points_for(300 * SECOND, SECOND), 300);
        assert_eq!(points_for(SECOND, 10 * SECOND), 1, "at least one");
        assert_eq!(points_for(7 * 86_400 * SECOND, SECOND / 100), MAX_POINTS);
    }

    #[test]
    fn samples_are_counted_and_the_oldest_falls_out_of_the_history() {
        let mut r = record();
        for mib in 0..15 {
            r.sampled(point(mib), None, SECOND);
        }
        assert_eq!(r.counters().samples_total, 15);
        let kept: Vec<u64> = r.points().iter().map(|p| p.memory_bytes).collect();
        assert_eq!(
            kept,
            (5..15).collect::<Vec<_>>(),
            "10 s at 1 s, oldest first"
        );
    }

    #[test]
    fn a_new_incarnation_is_not_given_the_old_ones_forecast() {
        let settings = forecast::Settings {
            bucket: 2 * SECOND,
            min_span: 20 * SECOND,
            min_floors: 8,
            window: 300 * SECOND,
        };
        let mut r = Record::new(300 * SECOND, SECOND, settings, SystemTime::UNIX_EPOCH);
        // Idle floors rising 1 MiB a second for a minute.
        for s in 0..60u32 {
            r.sampled(point((100 + u64::from(s)) << 20), Some(0), s * SECOND);
        }
        assert!(
            matches!(r.forecast(1 << 30, 59 * SECOND), Some(Ok(_))),
            "the old incarnation's rise is forecast"
        );
        r.found(true);
        let fresh = Point {
            incarnation: 2,
            ..point(10 << 20)
        };
        // The same bucket of the forecast as the last one drawn.
        let at = 59 * SECOND + SECOND / 2;
        r.sampled(fresh, Some(0), at);
        assert!(
            matches!(r.forecast(1 << 30, at), Some(Err(_))),
            "the fresh incarnation has no history to forecast from, at once"
        );
    }

    #[test]
    fn idle_memory_is_the_last_sample_with_zero_sessions_only() {
        let mut r = record();
        r.sampled(point(10), None, SECOND);
        assert_eq!(r.idle_memory(), None, "sessions unknown is not idle");
        r.sampled(point(20), Some(0), SECOND);
        r.sampled(point(90), Some(3), SECOND);
        assert_eq!(r.idle_memory(), Some(20), "busy samples leave it");
        r.sampled(point(30), Some(0), SECOND);
        assert_eq!(r.idle_memory(), Some(30));
    }

    #[test]
    fn transitions_are_counted_by_state_and_the_last_ones_kept() {
        let mut r = record();
        let at = SystemTime::UNIX_EPOCH + 5 * SECOND;
        for _ in 0..TRANSITIONS_KEPT + 3 {
            r.transition(&transition(State::Elevated), at);
        }
        r.transition(&transition(State::Draining), at);
        assert_eq!(r.counters().transitions_total[&State::Elevated], 35);
        assert_eq!(r.counters().transitions_total[&State::Draining], 1);
        let kept = r.transitions();
        assert_eq!(kept.len(), TRANSITIONS_KEPT);
        assert_eq!(kept.last().map(|t| t.to), Some(State::Draining));
        assert_eq!(r.since(), at);
    }

    #[test]
    fn an_error_or_a_reason_is_said_once_until_it_changes() {
        let mut r = record();
        assert!(r.sample_failed("denied".into()));
        assert!(!r.sample_failed("denied".into()), "the same error again");
        assert!(r.sample_failed("gone".into()));
        r.sampled(point(1), None, SECOND);
        assert!(
            r.sample_failed("gone".into()),
            "said again after a good sample"
        );
        assert_eq!(r.counters().sample_errors_total, 4);

        assert!(r.not_found("no process"));
        assert!(!r.not_found("no process"));
        r.found(false);
        assert!(r.not_found("no process"), "news again once found and lost");
    }

    #[test]
    fn the_forecast_is_drawn_once_per_bucket_from_the_idle_floor() {
        const MI: u64 = 1 << 20;
        let mut r = record();
        assert!(
            r.forecast(500 * MI, SECOND).is_none(),
            "no sample, no forecast"
        );
        // A floor rising 10 MiB an hour from 100 MiB, a busy peak every other minute.
        let minute = 60 * SECOND;
        for m in 0..8 * 60u64 {
            let at = minute * m as u32;
            let floor = 100 * MI + m * 10 * MI / 60;
            r.sampled(point(floor), Some(0), at);
            r.sampled(point(floor + 300 * MI), Some(9), at + SECOND);
            if m == 60 {
                let early = r.forecast(500 * MI, at).cloned();
                assert!(matches!(
                    early,
                    Some(Err(NoForecast::TooLittleHistory { .. }))
                ));
            }
        }
        let now = minute * 8 * 60;
        let drawn = r
            .forecast(500 * MI, now)
            .cloned()
            .unwrap()
            .expect("a rising floor");
        // 180 MiB at 8 h, 320 MiB to go at 10 MiB/h: about 32 h.
        let hours = drawn.eta.as_secs_f64() / 3600.0;
        assert!((30.0..34.0).contains(&hours), "{hours} h");
        r.sampled(point(180 * MI), Some(0), now + SECOND);
        let same = r
            .forecast(500 * MI, now + SECOND)
            .cloned()
            .unwrap()
            .unwrap();
        assert_eq!(same, drawn, "not drawn again within the bucket");
        let other = r
            .forecast(400 * MI, now + SECOND)
            .cloned()
            .unwrap()
            .unwrap();
        assert!(other.eta < drawn.eta, "drawn again for another threshold");
    }

    #[test]
    fn a_restart_is_counted_only_when_asked() {
        let mut r = record();
        r.found(false);
        r.found(true);
        assert_eq!(r.counters().target_restarts_total, 1);
    }

    #[test]
    fn glibc_is_warned_of_once_and_only_for_kms() {
        let mut r = record();
        assert!(!r.warn_of_glibc(&target("janus", Allocator::Glibc)));
        assert!(!r.warn_of_glibc(&target("kurento-media-server", Allocator::Unknown)));
        assert!(r.warn_of_glibc(&target("kurento-media-server", Allocator::Glibc)));
        assert!(!r.warn_of_glibc(&target("kurento-media-server", Allocator::Glibc)));
    }

    #[test]
    fn recycle_runs_are_counted_by_result_and_the_last_kept() {
        let mut r = record();
        let ran = |result, attempt| ActionRecord {
            at: "t".into(),
            action: "signal:TERM".into(),
            result,
            detail: String::new(),
            attempt,
        };
        r.recycle_action_ran(ran("failed", 1));
        r.recycle_action_ran(ran("ok", 2));
        r.drain_requested();
        assert_eq!(r.counters().recycle_actions_total["failed"], 1);
        assert_eq!(r.counters().recycle_actions_total["ok"], 1);
        assert_eq!(r.recycle_action().map(|a| a.attempt), Some(2));
        assert_eq!(r.counters().drain_requests_total, 1);
    }
}
