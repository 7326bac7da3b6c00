//! A state that flaps, said once with a count. Memory hovering at the threshold turns an
//! instance healthy, elevated, healthy again at every other sample: each flip is kept in
//! `/status`'s transitions, but the log says the first, then counts the others, and says the
//! count once the flapping stops (a [`WINDOW`] without a flip, or another transition), or
//! once a [`WINDOW`] while it goes on.
//!
//! Pure: it is told the time, and answers what to log.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{State, Transition};
use crate::units::Human;

/// Flips closer than this to the previous one are counted, not logged one by one.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Flaps {
    /// The last flip between healthy and elevated, logged or counted.
    last_flip: Option<Instant>,
    /// Flips counted and not said yet, since `counting_since`.
    counted: u32,
    counting_since: Option<Instant>,
    /// The state the last counted flip went to.
    now_in: Option<State>,
}

/// What a transition comes with in the log.
#[derive(Debug, PartialEq)]
pub struct Said {
    /// A count of the flips before it, said first.
    pub summary: Option<String>,
    /// Whether the transition gets its own line.
    pub logged: bool,
}

fn is_flip(tr: &Transition) -> bool {
    matches!(
        (tr.from, tr.to),
        (State::Healthy, State::Elevated) | (State::Elevated, State::Healthy)
    )
}

impl Flaps {
    pub fn transition(&mut self, now: Instant, tr: &Transition) -> Said {
        if !is_flip(tr) {
            let summary = self.said(now);
            self.last_flip = None;
            return Said {
                summary,
                logged: true,
            };
        }
        let close = self
            .last_flip
            .is_some_and(|last| now.saturating_duration_since(last) < WINDOW);
        if !close {
            let summary = self.said(now);
            self.last_flip = Some(now);
            return Said {
                summary,
                logged: true,
            };
        }
        self.last_flip = Some(now);
        self.counted += 1;
        self.counting_since.get_or_insert(now);
        self.now_in = Some(tr.to);
        Said {
            summary: None,
            logged: false,
        }
    }

    /// Flips counted and not said yet.
    #[cfg(test)]
    pub fn counted(&self) -> u32 {
        self.counted
    }

    /// At every step: the count, once the flips have stopped or a window has passed.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        let quiet = self
            .last_flip
            .is_some_and(|last| now.saturating_duration_since(last) >= WINDOW);
        let long = self
            .counting_since
            .is_some_and(|since| now.saturating_duration_since(since) >= WINDOW);
        (quiet || long).then(|| self.said(now)).flatten()
    }

    /// The flips counted so far, said and forgotten; `now` if no flip is known.
    fn said(&mut self, now: Instant) -> Option<String> {
        let since = self.counting_since.take()?;
        let until = self.last_flip.unwrap_or(now);
        let counted = std::mem::take(&mut self.counted);
        let state = self.now_in.take().map_or("?", State::as_str);
        Some(format!(
            "healthy and elevated alternated {counted} more time{} in {} (memory hovers at \
             the threshold); now {state}",
            if counted == 1 { "" } else { "s" },
            Human(
                until
                    .saturating_duration_since(since)
                    .max(Duration::from_secs(1))
            )
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn tr(from: State, to: State) -> Transition {
        Transition {
            from,
            to,
            reason: String::new(),
        }
    }

    /// Twelve flips in 13 s, as an instance at the threshold made them: one line for the first,
    /// one with the count of the other eleven once a minute has passed without a flip.
    #[test]
    fn a_state_that_flaps_is_said_once_with_a_count_not_at_every_flip() {
        let start = Instant::now();
        let mut flaps = Flaps::default();
        let mut lines = 0;
        let mut summaries = Vec::new();
        let mut state = State::Healthy;
        for i in 0..12u32 {
            let to = if state == State::Healthy {
                State::Elevated
            } else {
                State::Healthy
            };
            let said = flaps.transition(start + SECOND * i + SECOND / 10, &tr(state, to));
            lines += u32::from(said.logged);
            summaries.extend(said.summary);
            state = to;
            summaries.extend(flaps.tick(start + SECOND * (i + 1)));
        }
        assert_eq!(lines, 1, "only the first flip gets a line of its own");
        assert!(
            summaries.is_empty(),
            "nothing more while it flaps: {summaries:?}"
        );
        for s in 13..80 {
            summaries.extend(flaps.tick(start + SECOND * s));
        }
        assert_eq!(
            summaries,
            [
                "healthy and elevated alternated 11 more times in 10s (memory hovers at the \
              threshold); now healthy"
            ],
            "the count, once, a minute after the last flip"
        );
        let said = flaps.transition(start + SECOND * 200, &tr(State::Healthy, State::Elevated));
        assert_eq!(
            said,
            Said {
                summary: None,
                logged: true
            },
            "a flip long after is news again"
        );
    }

    #[test]
    fn flapping_that_goes_on_is_said_once_a_minute_and_another_transition_says_the_count_first() {
        let start = Instant::now();
        let mut flaps = Flaps::default();
        let mut summaries = Vec::new();
        let mut state = State::Healthy;
        for i in 0..130u32 {
            let to = if state == State::Healthy {
                State::Elevated
            } else {
                State::Healthy
            };
            flaps.transition(start + SECOND * i, &tr(state, to));
            state = to;
            summaries.extend(flaps.tick(start + SECOND * i + SECOND / 2));
        }
        assert_eq!(summaries.len(), 2, "once a minute: {summaries:?}");
        let said = flaps.transition(start + SECOND * 131, &tr(state, State::Draining));
        assert!(said.logged, "a drain is always said");
        assert!(
            said.summary.is_some_and(|s| s.contains("alternated")),
            "the flips before it are counted first"
        );
    }
}
