//! The forecast: when the memory a server keeps will cross the threshold, at the rate it has
//! been keeping more.
//!
//! Under fragmentation the figure that matters is not the peak a burst of sessions drives
//! (that comes back) but the floor under it: the memory still resident when the sessions are
//! gone, which ratchets up wave after wave. [`forecast`] is a pure function over a history of
//! [`Sample`]s that draws a trend through that floor and says when it reaches the threshold:
//!
//! 1. Only the current incarnation counts, and only since its last big drop (a floor below
//!    half the lowest of the three before it is a restart memprobe did not see as one).
//! 2. The floor of each [`Settings::bucket`] is its lowest sample taken with zero sessions —
//!    the idle ratchet, what `memprobe_idle_memory_bytes` shows — when the window holds enough
//!    of them; otherwise (sessions unknown, or never zero) the lowest sample of any kind, the
//!    lower envelope. A load spike never sets a floor.
//! 3. The trend is Theil–Sen's: the median of the slopes between every pair of floors, which
//!    a minority of odd floors (a spike that filled a bucket, a step) cannot move far.
//! 4. Honest bounds: no forecast from less than [`Settings::min_span`] of history or fewer
//!    than [`Settings::min_floors`] floors, none unless the slope's lower 95% bound (Sen's
//!    rank interval) is above zero — a rise that cannot be told from flat is no rise — and
//!    every forecast carries the earliest and latest crossing that the slope's bounds and two
//!    robust standard deviations of the floors around the trend allow.
//! 5. Only a ratchet is carried forward: a straight line through a curve still rising is no
//!    crossing. The rise must hold across the window (each quarter's median floor above the
//!    last's) and must not level off (the later half's slope, at the top of Sen's interval,
//!    at least 85% of the earlier half's), both judged up to the last bucket with sessions,
//!    after which the floor may rest but not fall back; a warm-up that levels off, or a
//!    cache trimmed every night, has no forecast.
//!
//! [`History`] keeps what the forecast needs in little memory: per bucket, the lowest sample
//! and the lowest idle one, which give the same floors as every sample would.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::units::{Bytes, Human};

/// One sample as the forecast sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken, from any fixed origin (a monotonic clock: wall-clock jumps would
    /// bend the trend).
    pub at: Duration,
    /// The deciding figure (`rss`, `anon` or `pss`).
    pub memory_bytes: u64,
    /// Live sessions, when known.
    pub sessions: Option<u32>,
    /// Which incarnation of the target it was taken of.
    pub incarnation: u64,
}

/// How much history a forecast needs, and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The span whose lowest sample is one floor.
    pub bucket: Duration,
    /// The least history a trend is drawn from.
    pub min_span: Duration,
    /// The fewest floors a trend is drawn from.
    pub min_floors: usize,
    /// How far back the trend looks.
    pub window: Duration,
}

impl Settings {
    /// Floors of 5 minutes over the last day, and never a forecast from less than 6 hours of
    /// one incarnation. The floor moves only when a wave of sessions ends, so a trend needs
    /// several waves; and traffic follows the day, so a shorter history is mostly one phase
    /// of it — the morning's climb (too steep) or the night's flat (no trend at all). A day's
    /// window holds a whole cycle once the incarnation is that old.
    pub const DEFAULT: Settings = Settings {
        bucket: Duration::from_secs(300),
        min_span: Duration::from_secs(6 * 3600),
        min_floors: 12,
        window: Duration::from_secs(24 * 3600),
    };
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// When the floor will cross the threshold, counted from the last sample, with its bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Forecast {
    /// The trend's crossing; zero when the trend is already over the threshold.
    pub eta: Duration,
    /// The soonest the crossing may be: the steepest slope the bounds allow, from the floor
    /// two robust standard deviations higher.
    pub earliest: Duration,
    /// The latest: the gentlest slope the bounds allow, from two deviations lower.
    pub latest: Duration,
    /// The trend's slope.
    pub bytes_per_hour: f64,
    /// The trend's floor at the last sample.
    pub floor_bytes: u64,
    /// How far the floors stray from the trend (1.4826 × their median absolute residual).
    pub spread_bytes: u64,
    /// Floors the trend was drawn through, and the span they cover.
    pub floors: usize,
    pub span: Duration,
    /// Whether they are idle floors (zero sessions) or the lower envelope of all samples.
    pub idle_floors: bool,
    /// Whether the floor fell by half within this incarnation and the window (a restart
    /// memprobe did not see, or a cache trimmed every night): only the history since is
    /// drawn, and nothing but that history says the rise is a ratchet.
    pub fell_back: bool,
}

impl fmt::Display for Forecast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "over the threshold in about {} ({} to {}), the floor rising {}/h from {}",
            Human(round_to_minute(self.eta)),
            Human(round_to_minute(self.earliest)),
            Human(round_to_minute(self.latest)),
            Bytes(self.bytes_per_hour.max(0.0) as u64),
            Bytes(self.floor_bytes)
        )
    }
}

fn round_to_minute(d: Duration) -> Duration {
    if d < Duration::from_secs(60) {
        return Duration::from_secs(d.as_secs());
    }
    Duration::from_secs((d.as_secs() + 30) / 60 * 60)
}

/// Why there is no forecast.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoForecast {
    /// Not enough of the current incarnation (since its last big drop) to tell a trend.
    TooLittleHistory {
        span: Duration,
        floors: usize,
        need_span: Duration,
        need_floors: usize,
    },
    /// The floor is flat or falling, or rises too little to tell from flat.
    NotRising { bytes_per_hour: f64 },
    /// The floor rises, but not as a ratchet does: it levels off (the later half of the
    /// window rises more slowly than the earlier, beyond doubt), as a warm-up does.
    LevellingOff {
        earlier_per_hour: f64,
        later_per_hour: f64,
    },
    /// The floor rises, but fell back within the window (a cache trimmed every night): a
    /// ratchet's floor never does.
    FellBack,
}

impl fmt::Display for NoForecast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoForecast::TooLittleHistory {
                span,
                floors,
                need_span,
                need_floors,
            } => write!(
                f,
                "no forecast yet: {} of history in {floors} floors, a trend needs {} in {need_floors}",
                Human(round_to_minute(*span)),
                Human(*need_span)
            ),
            NoForecast::NotRising { bytes_per_hour } => write!(
                f,
                "no forecast: the memory kept is not rising ({}{}/h)",
                if *bytes_per_hour < 0.0 { "-" } else { "" },
                Bytes(bytes_per_hour.abs() as u64)
            ),
            NoForecast::LevellingOff {
                earlier_per_hour,
                later_per_hour,
            } => write!(
                f,
                "no forecast: the memory kept is levelling off (rising {}/h lately, {}/h before)",
                Bytes(later_per_hour.max(0.0) as u64),
                Bytes(earlier_per_hour.max(0.0) as u64)
            ),
            NoForecast::FellBack => write!(
                f,
                "no forecast: the memory kept fell back within the window, so it is not a ratchet"
            ),
        }
    }
}

/// When `samples` (oldest first) say the memory kept will exceed `threshold_bytes`.
pub fn forecast(
    samples: &[Sample],
    threshold_bytes: u64,
    settings: &Settings,
) -> Result<Forecast, NoForecast> {
    let too_little = |span: Duration, floors: usize| NoForecast::TooLittleHistory {
        span,
        floors,
        need_span: settings.min_span,
        need_floors: settings.min_floors,
    };
    let Some(last) = samples.last() else {
        return Err(too_little(Duration::ZERO, 0));
    };
    let first_of_incarnation = samples
        .iter()
        .rposition(|s| s.incarnation != last.incarnation)
        .map_or(0, |i| i + 1);
    let from = last.at.saturating_sub(settings.window);
    let recent: Vec<&Sample> = samples[first_of_incarnation..]
        .iter()
        .filter(|s| s.at >= from)
        .collect();
    let (idle, all) = floors(&recent, settings.bucket);
    let idle_floors = idle.len() >= settings.min_floors;
    let mut points = if idle_floors { idle } else { all };
    let restarted_at = (1..points.len())
        .rev()
        .find(|&i| {
            let before = points[i.saturating_sub(3)..i].iter().map(|p| p.1);
            points[i].1 < before.fold(f64::INFINITY, f64::min) / 2.0
        })
        .unwrap_or(0);
    points.drain(..restarted_at);

    let span = match (points.first(), points.last()) {
        (Some(a), Some(b)) => Duration::from_secs_f64(b.0 - a.0),
        _ => Duration::ZERO,
    };
    if points.len() < settings.min_floors || span < settings.min_span {
        return Err(too_little(span, points.len()));
    }

    let t0 = points[0].0;
    let Some(Sen { slope, low, high }) = sen(&points) else {
        return Err(too_little(span, points.len()));
    };
    let per_hour = slope * 3600.0;
    if slope <= 0.0 || low <= 0.0 {
        return Err(NoForecast::NotRising {
            bytes_per_hour: per_hour,
        });
    }
    // Memory ratchets while sessions come and go; at night, with none, it rests. The rise is
    // judged up to the end of the last bucket that saw a session (or an unknown count).
    let width = settings.bucket.as_nanos().max(1);
    let busy_until = recent
        .iter()
        .rev()
        .find(|s| s.sessions != Some(0))
        .map(|s| ((s.at.as_nanos() / width + 1) * width) as f64 / 1e9);
    ratchet(&points, busy_until)?;
    let mut offsets: Vec<f64> = points.iter().map(|p| p.1 - slope * (p.0 - t0)).collect();
    let intercept = median(&mut offsets);
    let mut residuals: Vec<f64> = points
        .iter()
        .map(|p| (p.1 - intercept - slope * (p.0 - t0)).abs())
        .collect();
    let spread = 1.4826 * median(&mut residuals);
    let now = last.at.as_secs_f64();
    let floor = intercept + slope * (now - t0);
    let left = threshold_bytes as f64 - floor;
    let seconds = |bytes: f64, rate: f64| Duration::from_secs_f64((bytes / rate).clamp(0.0, 1e12));
    Ok(Forecast {
        eta: seconds(left, slope),
        earliest: seconds(left - 2.0 * spread, high),
        latest: seconds(left + 2.0 * spread, low),
        bytes_per_hour: per_hour,
        floor_bytes: floor.max(0.0) as u64,
        spread_bytes: spread as u64,
        floors: points.len(),
        span,
        idle_floors,
        fell_back: restarted_at > 0,
    })
}

/// A floor: (seconds, bytes).
type Point = (f64, f64);

/// A Theil–Sen slope, in bytes a second, with its 95% interval.
struct Sen {
    slope: f64,
    low: f64,
    high: f64,
}

/// The median of the slopes between every pair of points, and Sen's 95% interval: the
/// slopes at the ranks the variance of Kendall's S gives. `None` without two points apart.
fn sen(points: &[Point]) -> Option<Sen> {
    let mut slopes: Vec<f64> = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 > a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    let pairs = slopes.len();
    let slope = median(&mut slopes);
    let c = 1.96 * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
    let rank = |r: f64| (r.max(0.0) as usize).min(pairs - 1);
    let low = nth(&mut slopes, rank(((pairs as f64 - c) / 2.0).floor() - 1.0));
    let high = nth(&mut slopes, rank(((pairs as f64 + c) / 2.0).ceil()));
    Some(Sen { slope, low, high })
}

/// Whether rising floors are a ratchet, which a straight line may carry forward to the
/// threshold, rather than a curve that is still rising now and will level off. A ratchet's
/// rise holds across the whole window: the median floor of each quarter of it is above the
/// one before (a cache trimmed at midnight falls back), and the later half rises not much
/// more slowly than the earlier (a warm-up levelling off at 900 MiB rises ever more slowly,
/// however straight its first hours look). Both are judged up to `busy_until`, the end of the
/// last bucket with sessions: a ratchet rests while nobody is on the server, and that idle
/// stretch must only not fall back by a third of the rise.
fn ratchet(points: &[Point], busy_until: Option<f64>) -> Result<(), NoForecast> {
    // The stretch with sessions; the idle one after it must only hold what it reached.
    let busy = busy_until.map_or(points.len(), |t| points.iter().filter(|p| p.0 < t).count());
    let (points, rest) = if busy >= 8 {
        points.split_at(busy)
    } else {
        (points, &[][..])
    };
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Ok(());
    };
    let (t0, length) = (first.0, last.0 - first.0);
    let part =
        |p: &Point, parts: f64| (((p.0 - t0) / length * parts) as usize).min(parts as usize - 1);
    let mut quarters: [Vec<f64>; 4] = Default::default();
    for p in points {
        quarters[part(p, 4.0)].push(p.1);
    }
    let medians: Vec<f64> = quarters
        .iter_mut()
        .filter(|q| !q.is_empty())
        .map(|q| median(q))
        .collect();
    if medians.windows(2).any(|pair| pair[1] <= pair[0]) {
        return Err(NoForecast::FellBack);
    }
    // Where the idle stretch has come to (the median of its later half) may settle a little
    // below the last floors (an allocator handing pages back), never by a third of the rise.
    let mut rested: Vec<f64> = rest[rest.len() / 2..].iter().map(|p| p.1).collect();
    if let (Some(first), Some(last)) = (medians.first(), medians.last())
        && !rested.is_empty()
        && median(&mut rested) < last - (last - first) / 3.0
    {
        return Err(NoForecast::FellBack);
    }
    let (earlier, later): (Vec<Point>, Vec<Point>) = points.iter().partition(|p| part(p, 2.0) == 0);
    // Beyond doubt, and by more than a ratchet's own unevenness: the later half at most
    // 85% as steep as the earlier, at the top of its interval.
    if let (Some(earlier), Some(later)) = (sen(&earlier), sen(&later))
        && later.high < earlier.slope * 0.85
    {
        return Err(NoForecast::LevellingOff {
            earlier_per_hour: earlier.slope * 3600.0,
            later_per_hour: later.slope * 3600.0,
        });
    }
    Ok(())
}

/// Per bucket, the lowest idle sample and the lowest of all, as (seconds, bytes), oldest first.
fn floors(samples: &[&Sample], bucket: Duration) -> (Vec<Point>, Vec<Point>) {
    let width = bucket.as_nanos().max(1);
    let (mut idle, mut all) = (Vec::new(), Vec::new());
    let mut current: Option<u128> = None;
    let (mut lowest_idle, mut lowest): (Option<&Sample>, Option<&Sample>) = (None, None);
    let point = |s: &Sample| (s.at.as_secs_f64(), s.memory_bytes as f64);
    for &s in samples {
        let b = s.at.as_nanos() / width;
        if current != Some(b) {
            idle.extend(lowest_idle.take().map(point));
            all.extend(lowest.take().map(point));
            current = Some(b);
        }
        if lowest.is_none_or(|l| s.memory_bytes < l.memory_bytes) {
            lowest = Some(s);
        }
        if s.sessions == Some(0) && lowest_idle.is_none_or(|l| s.memory_bytes < l.memory_bytes) {
            lowest_idle = Some(s);
        }
    }
    idle.extend(lowest_idle.map(point));
    all.extend(lowest.map(point));
    (idle, all)
}

fn nth(values: &mut [f64], k: usize) -> f64 {
    *values.select_nth_unstable_by(k, f64::total_cmp).1
}

fn median(values: &mut [f64]) -> f64 {
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        nth(values, mid)
    } else {
        let high = nth(values, mid);
        let low = values[..mid].iter().copied().fold(f64::MIN, f64::max);
        (low + high) / 2.0
    }
}

/// The history a forecast is drawn from, in little memory: per bucket of the current
/// settings, the lowest sample and the lowest idle one (the floors [`forecast`] would take
/// from every sample), over the window.
#[derive(Clone, Debug)]
pub struct History {
    settings: Settings,
    kept: VecDeque<Kept>,
}

#[derive(Clone, Copy, Debug)]
struct Kept {
    bucket: u128,
    lowest: Sample,
    lowest_idle: Option<Sample>,
    /// A sample with sessions (or an unknown count), if the bucket had one: the forecast
    /// judges the rise up to the last such bucket.
    busy: Option<Sample>,
}

impl History {
    pub fn new(settings: Settings) -> Self {
        History {
            settings,
            kept: VecDeque::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn push(&mut self, s: Sample) {
        let bucket = s.at.as_nanos() / self.settings.bucket.as_nanos().max(1);
        let idle = (s.sessions == Some(0)).then_some(s);
        let busy = (s.sessions != Some(0)).then_some(s);
        match self.kept.back_mut() {
            Some(k) if k.bucket == bucket && k.lowest.incarnation == s.incarnation => {
                if s.memory_bytes < k.lowest.memory_bytes {
                    k.lowest = s;
                }
                k.busy = k.busy.or(busy);
                if idle.is_some()
                    && k.lowest_idle
                        .is_none_or(|l| s.memory_bytes < l.memory_bytes)
                {
                    k.lowest_idle = idle;
                }
            }
            _ => self.kept.push_back(Kept {
                bucket,
                lowest: s,
                lowest_idle: idle,
                busy,
            }),
        }
        let from =
            s.at.saturating_sub(self.settings.window + self.settings.bucket);
        while self.kept.front().is_some_and(|k| k.lowest.at < from) {
            self.kept.pop_front();
        }
    }

    /// What is kept, oldest first: a slice for [`forecast`].
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.kept.len() * 3);
        for k in &self.kept {
            let from = out.len();
            out.push(k.lowest);
            out.extend(k.lowest_idle.filter(|idle| idle.at != k.lowest.at));
            out.extend(k.busy.filter(|busy| busy.at != k.lowest.at));
            out[from..].sort_by_key(|s| s.at);
        }
        out
    }

    pub fn forecast(&self, threshold_bytes: u64) -> Result<Forecast, NoForecast> {
        forecast(&self.samples(), threshold_bytes, &self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: f64 = 1024.0 * 1024.0;
    const HOUR: f64 = 3600.0;
    const THRESHOLD: u64 = 1600 * 1024 * 1024;

    /// A sample every minute for `hours`, memory in MiB as `mib(hours since start)`.
    fn series(hours: f64, sessions: Option<u32>, mut mib: impl FnMut(f64) -> f64) -> Vec<Sample> {
        (0..=(hours * 60.0) as u64)
            .map(|minute| {
                let h = minute as f64 / 60.0;
                Sample {
                    at: Duration::from_secs(minute * 60),
                    memory_bytes: (mib(h) * MI) as u64,
                    sessions,
                    incarnation: 1,
                }
            })
            .collect()
    }

    fn hours(d: Duration) -> f64 {
        d.as_secs_f64() / HOUR
    }

    fn run(samples: &[Sample]) -> Result<Forecast, NoForecast> {
        forecast(samples, THRESHOLD, &Settings::DEFAULT)
    }

    #[test]
    fn a_linear_ratchet_forecasts_its_crossing() {
        // 100 MiB/h from 100 MiB for 12 h: at 1300 MiB, 3 h short of 1600 MiB.
        let f = run(&series(12.0, Some(0), |h| 100.0 + 100.0 * h)).expect("a forecast");
        assert!(
            (hours(f.eta) - 3.0).abs() < 0.05,
            "the trend's crossing is 3 h away: {f}"
        );
        assert!((f.bytes_per_hour / MI - 100.0).abs() < 0.5, "{f}");
        assert!(f.idle_floors, "idle samples make idle floors");
        assert!(
            f.earliest <= f.eta && f.eta <= f.latest,
            "the bounds hold the trend's own crossing: {f}"
        );
        assert!(
            hours(f.latest) - hours(f.earliest) < 0.1,
            "a series on a line leaves almost no doubt: {f}"
        );
    }

    #[test]
    fn the_ratchet_under_load_peaks_is_the_floor_not_the_peaks() {
        // The floor rises 50 MiB/h; sessions add up to 600 MiB for 40 of every 60 minutes.
        let samples: Vec<Sample> = series(12.0, None, |h| 100.0 + 50.0 * h)
            .into_iter()
            .map(|mut s| {
                let minute = s.at.as_secs() / 60;
                if minute % 60 < 40 {
                    s.memory_bytes += (600.0 * MI) as u64;
                    s.sessions = Some(8);
                } else {
                    s.sessions = Some(0);
                }
                s
            })
            .collect();
        let f = run(&samples).expect("a forecast");
        assert!(f.idle_floors);
        assert!(
            (f.bytes_per_hour / MI - 50.0).abs() < 1.0,
            "the slope is the floor's 50 MiB/h, not the load's: {f}"
        );
        assert!((hours(f.eta) - 18.0).abs() < 0.5, "{f}");
    }

    #[test]
    fn a_flat_series_has_no_forecast() {
        let e = run(&series(24.0, Some(0), |_| 800.0)).unwrap_err();
        assert!(
            matches!(e, NoForecast::NotRising { .. }),
            "flat memory never crosses: {e}"
        );
    }

    #[test]
    fn a_rise_that_levels_off_is_no_ratchet() {
        // A warm-up: from 200 MiB towards 900 MiB, ever more slowly. A straight line through
        // its first 6 h would cross 1600 MiB; the curve never does.
        let e = run(&series(6.0, Some(0), |h| 900.0 - 700.0 * (-h / 4.0).exp())).unwrap_err();
        assert!(
            matches!(e, NoForecast::LevellingOff { earlier_per_hour, later_per_hour }
                if later_per_hour < earlier_per_hour),
            "the later half rises more slowly, beyond doubt: {e}"
        );
        assert!(
            e.to_string()
                .starts_with("no forecast: the memory kept is levelling off")
        );
    }

    /// A day of traffic, then the night: 40 of every 60 minutes busy (600 MiB of sessions
    /// over the floor) until `busy_hours`, idle after; the floor in MiB as `floor(hours)`.
    fn day_then_night(hours: f64, busy_hours: f64, floor: impl Fn(f64) -> f64) -> Vec<Sample> {
        series(hours, Some(0), floor)
            .into_iter()
            .map(|mut s| {
                let h = s.at.as_secs_f64() / HOUR;
                if h < busy_hours && s.at.as_secs() / 60 % 60 < 40 {
                    s.memory_bytes += (600.0 * MI) as u64;
                    s.sessions = Some(8);
                }
                s
            })
            .collect()
    }

    #[test]
    fn a_ratchet_resting_at_night_is_still_one() {
        // 50 MiB/h while sessions come and go for 12 h; then, with none, it holds 700 MiB.
        let ratchet = |h: f64| 100.0 + 50.0 * h.min(12.0);
        let samples = day_then_night(16.0, 12.0, ratchet);
        let f = run(&samples).expect("the night's flat floor is rest, not levelling off");
        assert!(f.bytes_per_hour > 0.0, "{f}");
        let mut history = History::new(Settings::DEFAULT);
        samples.iter().for_each(|s| history.push(*s));
        assert_eq!(
            history.forecast(THRESHOLD),
            Ok(f),
            "the history keeps the busy buckets"
        );
        // The same day, and a cache trimmed by 300 MiB at 14 h, in the night.
        let trimmed = |h: f64| ratchet(h) - if h >= 14.0 { 300.0 } else { 0.0 };
        let e = run(&day_then_night(16.0, 12.0, trimmed)).unwrap_err();
        assert_eq!(e, NoForecast::FellBack, "{e}");
    }

    #[test]
    fn a_rise_that_fell_back_in_the_window_is_no_ratchet() {
        // A cache trimmed at midnight, 14 h in: the day's rise does not hold.
        let e = run(&series(30.0, Some(0), |h| {
            400.0 + 15.0 * ((h + 10.0) % 24.0)
        }))
        .unwrap_err();
        assert_eq!(e, NoForecast::FellBack, "{e}");
        assert_eq!(
            e.to_string(),
            "no forecast: the memory kept fell back within the window, so it is not a ratchet"
        );
        // A ratchet of steps still is one: each quarter's floor above the last.
        let steps = run(&series(12.0, Some(0), |h| 200.0 + 40.0 * h.floor())).expect("a ratchet");
        assert!(!steps.fell_back, "{steps}");
    }

    #[test]
    fn falling_memory_has_no_forecast() {
        let e = run(&series(12.0, Some(0), |h| 900.0 - 20.0 * h)).unwrap_err();
        assert!(matches!(e, NoForecast::NotRising { bytes_per_hour } if bytes_per_hour < 0.0));
        assert!(e.to_string().contains("not rising (-20.00 MiB/h)"), "{e}");
    }

    #[test]
    fn a_single_spike_moves_nothing() {
        let line = |h: f64| 100.0 + 100.0 * h;
        let mut samples = series(12.0, None, line);
        samples[300].memory_bytes = THRESHOLD * 2;
        let spiked = run(&samples).expect("a forecast");
        let clean = run(&series(12.0, None, line)).expect("a forecast");
        assert_eq!(
            spiked, clean,
            "one sample over the threshold is not a floor"
        );
        // A spike that fills a whole bucket becomes a floor; the median slope still holds.
        for s in &mut samples[300..306] {
            s.memory_bytes = THRESHOLD;
        }
        let f = run(&samples).expect("a forecast");
        assert!((hours(f.eta) - 3.0).abs() < 0.1, "{f}");
    }

    #[test]
    fn noise_widens_the_bounds_around_the_trend() {
        let mut rng = fastrand::Rng::with_seed(7);
        let samples = series(12.0, Some(0), |h| {
            100.0 + 100.0 * h + (rng.f64() - 0.5) * 160.0
        });
        let f = run(&samples).expect("a forecast");
        // The floor of ±80 MiB of noise is its low edge: the lowest of five samples a bucket
        // lies about 53 MiB under the line, so the crossing comes about 32 minutes later.
        assert!((hours(f.eta) - 3.53).abs() < 0.2, "{f}");
        assert!(
            (f.bytes_per_hour / MI - 100.0).abs() < 3.0,
            "the slope is the line's: {f}"
        );
        assert!(
            f.spread_bytes as f64 > 10.0 * MI,
            "the noise shows in the spread: {f}"
        );
        assert!(
            hours(f.latest) - hours(f.earliest) > 0.5,
            "the bounds say how far off it may be: {f}"
        );
        assert!(f.earliest <= f.eta && f.eta <= f.latest);
    }

    #[test]
    fn a_rise_lost_in_noise_is_not_a_trend() {
        let mut rng = fastrand::Rng::with_seed(11);
        let samples = series(12.0, Some(0), |h| 800.0 + h + (rng.f64() - 0.5) * 200.0);
        let e = run(&samples).unwrap_err();
        assert!(
            matches!(e, NoForecast::NotRising { .. }),
            "1 MiB/h under 200 MiB of noise cannot be told from flat: {e}"
        );
    }

    #[test]
    fn too_short_a_history_has_no_forecast() {
        let e = run(&series(5.0, Some(0), |h| 100.0 + 100.0 * h)).unwrap_err();
        assert_eq!(
            e,
            NoForecast::TooLittleHistory {
                span: Duration::from_secs(5 * 3600),
                floors: 61,
                need_span: Duration::from_secs(6 * 3600),
                need_floors: 12,
            },
            "five hours is less than the six a trend needs"
        );
        assert_eq!(
            e.to_string(),
            "no forecast yet: 5h of history in 61 floors, a trend needs 6h in 12"
        );
        assert!(matches!(
            run(&[]),
            Err(NoForecast::TooLittleHistory { floors: 0, .. })
        ));
    }

    #[test]
    fn a_new_incarnation_starts_the_history_again() {
        let mut samples = series(12.0, Some(0), |h| 100.0 + 100.0 * h);
        for s in &mut samples[600..] {
            s.incarnation = 2;
        }
        let e = run(&samples).unwrap_err();
        assert!(
            matches!(e, NoForecast::TooLittleHistory { .. }),
            "two hours of the new incarnation are too few: {e}"
        );
    }

    #[test]
    fn a_big_drop_is_a_restart_too() {
        // Restarted at 8 h without a new incarnation seen: back to 100 MiB.
        let samples = series(12.0, Some(0), |h| {
            if h < 8.0 {
                100.0 + 100.0 * h
            } else {
                100.0 + 10.0 * (h - 8.0)
            }
        });
        let e = run(&samples).unwrap_err();
        assert!(matches!(e, NoForecast::TooLittleHistory { .. }), "{e}");
        let later = series(24.0, Some(0), |h| {
            if h < 8.0 {
                100.0 + 100.0 * h
            } else {
                100.0 + 50.0 * (h - 8.0)
            }
        });
        let f = run(&later).expect("16 h since the drop");
        assert!(
            (f.bytes_per_hour / MI - 50.0).abs() < 1.0,
            "only the rate since the drop: {f}"
        );
        assert!(f.fell_back, "and it says the floor fell back in the window");
    }

    #[test]
    fn without_idle_samples_the_lower_envelope_decides() {
        let f = run(&series(12.0, None, |h| 100.0 + 100.0 * h)).expect("a forecast");
        assert!(!f.idle_floors, "no session count: all samples");
        assert!((hours(f.eta) - 3.0).abs() < 0.05, "{f}");
    }

    #[test]
    fn over_the_threshold_already_is_a_crossing_now() {
        let f = run(&series(12.0, Some(0), |h| 1000.0 + 100.0 * h)).expect("a forecast");
        assert_eq!(f.eta, Duration::ZERO);
        assert_eq!(f.earliest, Duration::ZERO);
    }

    #[test]
    fn the_history_keeps_what_the_forecast_needs() {
        let samples: Vec<Sample> =
            series(30.0, None, |h| 100.0 + 40.0 * h + (h * 7.0).sin() * 30.0)
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    s.sessions = Some((i % 7) as u32);
                    s
                })
                .collect();
        let mut history = History::new(Settings::DEFAULT);
        for s in &samples {
            history.push(*s);
        }
        assert!(
            history.samples().len() <= 3 * (24 * 12 + 2),
            "three samples per bucket of the window at most: the lowest, the lowest idle, one busy"
        );
        assert_eq!(
            history.forecast(THRESHOLD),
            run(&samples),
            "the kept floors forecast as every sample does"
        );
    }

    #[test]
    fn the_forecast_reads_as_a_sentence() {
        let f = run(&series(12.0, Some(0), |h| 100.0 + 100.0 * h)).unwrap();
        assert_eq!(
            f.to_string(),
            "over the threshold in about 3h (3h to 3h), the floor rising 100.00 MiB/h from 1.27 GiB"
        );
    }
}
