//! Which memory problem it is: what memprobe sees when memory does not come back, in words an
//! operator can act on. Pure; shown in `/status`, on the page and in `/metrics`.
//!
//! | kind                   | what memprobe sees                                          |
//! |------------------------|-------------------------------------------------------------|
//! | `fragmentation`        | memory over the threshold with every session ended (and destroyed): the heap keeps it |
//! | `stuck_teardown`       | sessions released but never destroyed: the media still runs  |
//! | `growth_with_sessions` | memory over the threshold while sessions are live           |
//! | `unknown`              | memory over the threshold, and no session count to tell     |

use serde::Serialize;

/// The kinds, as `memprobe_memory_problem{kind}` labels them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    Fragmentation,
    StuckTeardown,
    GrowthWithSessions,
    Unknown,
}

impl Problem {
    pub const ALL: [Problem; 4] = [
        Problem::Fragmentation,
        Problem::StuckTeardown,
        Problem::GrowthWithSessions,
        Problem::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Fragmentation => "fragmentation",
            Problem::StuckTeardown => "stuck_teardown",
            Problem::GrowthWithSessions => "growth_with_sessions",
            Problem::Unknown => "unknown",
        }
    }
}

/// The problem, and what it means, in one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub kind: Problem,
    pub says: String,
}

/// What memprobe sees now: `over` the threshold, the live `sessions` (when known), and the
/// server's word that it can no longer tear sessions down (`stuck`). None while memory is
/// under the threshold and the teardown works.
pub fn diagnose(over: bool, sessions: Option<u32>, stuck: Option<&str>) -> Option<Diagnosis> {
    let (kind, says) = match (stuck, over, sessions) {
        (Some(why), _, _) => (
            Problem::StuckTeardown,
            format!(
                "stuck teardown, not fragmentation: {why}; the media of released sessions \
                 still runs and holds its memory and threads, and every new session would \
                 leak the same way"
            ),
        ),
        (None, false, _) => return None,
        (None, true, Some(0)) => (
            Problem::Fragmentation,
            "fragmentation: every session has ended and been destroyed, yet the memory stays; \
             the heap keeps it (jemalloc gives most of it back)"
                .to_string(),
        ),
        (None, true, Some(n)) => (
            Problem::GrowthWithSessions,
            format!(
                "growth with {n} live session{}: load, or a session that leaks; it is \
                 fragmentation only if the memory stays once they end",
                if n == 1 { "" } else { "s" }
            ),
        ),
        (None, true, None) => (
            Problem::Unknown,
            "memory over the threshold, with no session count to tell fragmentation from load"
                .to_string(),
        ),
    };
    Some(Diagnosis { kind, says })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_problem_is_told_by_what_memprobe_sees() {
        assert_eq!(
            diagnose(false, Some(3), None),
            None,
            "no problem under the threshold"
        );
        let kind = |over, sessions, stuck| diagnose(over, sessions, stuck).map(|d| d.kind);
        assert_eq!(kind(true, Some(0), None), Some(Problem::Fragmentation));
        assert_eq!(kind(true, Some(2), None), Some(Problem::GrowthWithSessions));
        assert_eq!(kind(true, None, None), Some(Problem::Unknown));
        let stuck = "kms teardown stuck: 16 pipelines released but not destroyed for 1m";
        for (over, sessions) in [(true, Some(0)), (false, Some(4)), (true, None)] {
            let d = diagnose(over, sessions, Some(stuck)).expect("stuck is always a problem");
            assert_eq!(d.kind, Problem::StuckTeardown);
            assert!(d.says.contains(stuck) && d.says.contains("not fragmentation"));
        }
        assert!(
            diagnose(true, Some(1), None)
                .unwrap()
                .says
                .starts_with("growth with 1 live session:")
        );
    }
}
