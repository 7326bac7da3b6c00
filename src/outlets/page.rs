//! The status page (`GET /`): what an operator paged at 3 a.m. looks at.
//!
//! One small HTML page, rendered on the server from the published snapshot: no external
//! asset and no script framework, so it works air-gapped and through `kubectl port-forward`.
//! An SVG chart draws the deciding memory figure (and rss beside it when they differ), the
//! threshold, critical and limit lines, shaded bands where the target was elevated, draining,
//! stalled or to be recycled, a mark at each restart, the session count on a second axis, and
//! the live bytes the target reports of itself when it does (the demo's workload), so that
//! fragmentation shows as resident memory high above live memory.
//! Beside it: the state, the reason, ready and live, the allocator (with a hint on glibc), the
//! last transitions, and links to `/status`, `/metrics` and `/history.json`. It reloads itself
//! every interval (a meta refresh), and follows the reader's light or dark scheme.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::policy::State;
use crate::status::{Point, Status};
use crate::units::{Bytes, Human};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;
/// Points drawn per series at most: more would not show on 760 pixels, and the page stays
/// small.
const MAX_DRAWN: usize = 760;

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page.
pub fn render(status: &Status) -> String {
    let refresh = status
        .settings
        .interval
        .trim_end_matches("ms")
        .parse::<u64>()
        .ok()
        .filter(|_| status.settings.interval.ends_with("ms"))
        .map_or_else(
            || seconds(&status.settings.interval),
            |ms| ms.div_ceil(1000),
        )
        .max(1);
    let mut page = String::with_capacity(16 * 1024);
    let state = status.state.as_str();
    let target = status
        .target
        .as_ref()
        .map_or("no target yet".to_string(), |t| match t.pid {
            Some(pid) => format!("{} (pid {pid})", t.name),
            None => t.name.clone(),
        });
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>memprobe: {state}</title>
<style>
:root {{ color-scheme: light dark; --fg:#1b1b1b; --bg:#fafafa; --muted:#666; --grid:#ddd;
  --mem:#1f6feb; --rss:#8fb4f0; --thr:#d29922; --crit:#cf222e; --lim:#888; --ses:#2da44e; --live:#8250df; }}
@media (prefers-color-scheme: dark) {{ :root {{ --fg:#e6e6e6; --bg:#111; --muted:#999;
  --grid:#333; --mem:#58a6ff; --rss:#2f5a8f; --ses:#3fb950; --live:#bc8cff; }} }}
body {{ font: 15px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 0 auto; padding: 12px; max-width: 820px; }}
h1 {{ font-size: 20px; margin: 4px 0; }} .muted {{ color: var(--muted); }}
.state {{ display: inline-block; padding: 2px 8px; border-radius: 4px; font-weight: 600; }}
.s-healthy {{ background:#2da44e33; }} .s-elevated {{ background:#d2992233; }}
.s-draining, .s-stalled {{ background:#fb8f4433; }} .s-recycle {{ background:#cf222e33; }}
.s-lost, .s-starting {{ background:#8883; }}
svg {{ width: 100%; height: auto; }} svg text {{ fill: var(--muted); font-size: 11px; }}
.band.elevated {{ fill:#d29922; opacity:.12; }} .band.draining {{ fill:#fb8f44; opacity:.22; }}
.band.stalled {{ fill:#a371f7; opacity:.2; }} .band.recycle {{ fill:#cf222e; opacity:.22; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td {{ border-top: 1px solid var(--grid); padding: 3px 6px; vertical-align: top; }}
</style></head><body>
<h1>memprobe <span class="muted">watching {target}</span></h1>
<p><span class="state s-{state}" id="state">{state}</span> ready: <b id="ready">{ready}</b>
&middot; live: <b id="live">{live}</b></p>
<p id="reason">{reason}</p>
"#,
        target = esc(&target),
        ready = status.ready,
        live = status.live,
        reason = esc(&status.reason),
    );
    if let Some(next) = next_decision(status, SystemTime::now()) {
        let _ = writeln!(page, "<p class=\"muted\" id=\"next\">{}</p>", esc(&next));
    }
    if !status.forecast.said.is_empty() {
        let _ = writeln!(
            page,
            "<p class=\"muted\" id=\"forecast\">{}</p>",
            esc(&status.forecast.said)
        );
    }
    if let Some(t) = &status.target {
        let allocator = t.allocator.as_str();
        let hint = if allocator == "glibc" {
            " &mdash; glibc's malloc fragments: preload jemalloc (deploy/kurento-jemalloc)"
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<p class=\"muted\">allocator: <b id=\"allocator\">{allocator}</b>{hint}</p>"
        );
    }
    chart(&mut page, status);
    page.push_str("<h2 style=\"font-size:16px\">Last transitions</h2><table id=\"transitions\">\n");
    for t in status.transitions.iter().rev().take(12) {
        let _ = writeln!(
            page,
            "<tr><td class=\"muted\">{}</td><td>{} &rarr; <b>{}</b></td><td>{}</td></tr>",
            esc(&t.at),
            t.from.as_str(),
            t.to.as_str(),
            esc(&t.reason)
        );
    }
    page.push_str(
        "</table>\n<p class=\"muted\"><a href=\"/status\">/status</a> &middot; \
         <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/history.json\">/history.json</a></p>\n\
         </body></html>\n",
    );
    page
}

/// `5s`, `1m 30s` as whole seconds, roughly (for the refresh only).
fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text).map_or(5, |d| d.as_secs().max(1))
}

/// How long until the next decision, in words, when one is pending.
fn next_decision(status: &Status, now: SystemTime) -> Option<String> {
    let setting = |text: &str| humantime::parse_duration(text).ok();
    let sustain = setting(&status.settings.sustain)?;
    // Time in the current state, from when it began.
    let in_state = humantime::parse_rfc3339_weak(&status.since)
        .ok()
        .and_then(|since| now.duration_since(since).ok())
        .unwrap_or_default();
    let left = |of: Duration| Human(of.saturating_sub(in_state));
    match status.state {
        State::Elevated => {
            let left = sustain.as_secs_f64() - status.over_threshold_seconds;
            Some(format!(
                "drains in {:.0}s if memory stays over the threshold (--sustain {})",
                left.max(0.0),
                status.settings.sustain
            ))
        }
        State::Draining if status.drain_requested_by.is_none() => {
            let timeout = setting(&status.settings.drain_timeout)?;
            let min_drain = setting(&status.settings.min_drain)?;
            let latest = format!(
                "at the latest in {} (--drain-timeout {})",
                left(timeout),
                status.settings.drain_timeout
            );
            Some(match status.sessions {
                None => format!("recycles {latest}: the session count is unknown"),
                Some(_) if in_state < min_drain => format!(
                    "recycles once no session is left, not before {} from now (--min-drain {}), \
                     and {latest}",
                    left(min_drain),
                    status.settings.min_drain
                ),
                Some(_) => format!("recycles as soon as no session is left, and {latest}"),
            })
        }
        _ => None,
    }
}

/// Every k-th point, and the last, so at most about [`MAX_DRAWN`] are drawn.
fn drawn(points: &[Point]) -> impl Iterator<Item = &Point> {
    let step = points.len().div_ceil(MAX_DRAWN).max(1);
    let last = points.len().saturating_sub(1);
    points
        .iter()
        .enumerate()
        .filter(move |(i, _)| i % step == 0 || *i == last)
        .map(|(_, p)| p)
}

fn chart(page: &mut String, status: &Status) {
    let points: &[Point] = &status.history;
    let _ = writeln!(
        page,
        "<svg id=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"memory over time\">"
    );
    if points.is_empty() {
        page.push_str("<text x=\"80\" y=\"120\">no samples yet</text></svg>\n");
        return;
    }
    let threshold = status.threshold.bytes;
    let critical = status.threshold.critical_bytes;
    let limit = status.threshold.limit.bytes;
    let peak = points
        .iter()
        .map(|p| p.memory_bytes.max(p.rss_bytes))
        .max()
        .unwrap_or(0);
    let mut top = peak.max(threshold).max(critical.unwrap_or(0));
    // The limit is drawn when it is near: a host's MemTotal would flatten everything.
    let show_limit = limit <= top.saturating_mul(2);
    if show_limit {
        top = top.max(limit);
    }
    let top = (top as f64 * 1.08).max(1.0);
    let (t0, t1) = (
        points[0].at_ms,
        points[points.len() - 1].at_ms.max(points[0].at_ms + 1),
    );
    let x = |at: u64| LEFT + (at - t0) as f64 / (t1 - t0) as f64 * (WIDTH - LEFT - RIGHT);
    let y = |bytes: u64| TOP + (1.0 - bytes as f64 / top) * (HEIGHT - TOP - BOTTOM);
    // Bands, one rect per run of a shaded state.
    let mut run: Option<(State, u64)> = None;
    let close = |page: &mut String, state: State, from: u64, to: u64| {
        let _ = writeln!(
            page,
            "<rect class=\"band {}\" x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"/>",
            state.as_str(),
            x(from),
            (x(to) - x(from)).max(2.0),
            HEIGHT - TOP - BOTTOM
        );
    };
    for p in points {
        let shaded = matches!(
            p.state,
            State::Elevated | State::Draining | State::Stalled | State::Recycle
        );
        match run {
            Some((s, from)) if s != p.state => {
                close(page, s, from, p.at_ms);
                run = shaded.then_some((p.state, p.at_ms));
            }
            None if shaded => run = Some((p.state, p.at_ms)),
            _ => {}
        }
    }
    if let Some((s, from)) = run {
        close(page, s, from, t1);
    }
    // Axes and labels.
    for fraction in [0.0, 0.5, 1.0] {
        let bytes = (top * fraction) as u64;
        let (right, at) = (WIDTH - RIGHT, y(bytes));
        let _ = writeln!(
            page,
            "<line x1=\"{LEFT}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"var(--grid)\"/>\
             <text x=\"4\" y=\"{label_at:.1}\">{label}</text>",
            label_at = at + 4.0,
            label = Bytes(bytes)
        );
    }
    let span = (t1 - t0) / 1000;
    let _ = writeln!(
        page,
        "<text x=\"{LEFT}\" y=\"{}\">{} ago</text><text x=\"{}\" y=\"{0}\">now</text>",
        HEIGHT - 6.0,
        humantime::format_duration(std::time::Duration::from_secs(span)),
        WIDTH - RIGHT - 20.0
    );
    let hline = |page: &mut String, id: &str, bytes: u64, color: &str, label: &str| {
        let (right, at) = (WIDTH - RIGHT, y(bytes));
        let _ = writeln!(
            page,
            "<line id=\"{id}\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"var({color})\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{text_x}\" y=\"{text_y:.1}\">{label} {size}</text>",
            text_x = LEFT + 4.0,
            text_y = at - 3.0,
            size = Bytes(bytes)
        );
    };
    hline(page, "threshold", threshold, "--thr", "threshold");
    if let Some(c) = critical {
        hline(page, "critical", c, "--crit", "critical");
    }
    if show_limit {
        hline(page, "limit", limit, "--lim", "limit");
    }
    // Restarts.
    for pair in points.windows(2) {
        if pair[1].incarnation != pair[0].incarnation {
            let _ = writeln!(
                page,
                "<line class=\"restart\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1}\" \
                 stroke=\"var(--crit)\"/>",
                x(pair[1].at_ms),
                HEIGHT - BOTTOM
            );
        }
    }
    let polyline = |page: &mut String, id: &str, color: &str, value: &dyn Fn(&Point) -> u64| {
        let _ = write!(
            page,
            "<polyline id=\"{id}\" fill=\"none\" stroke=\"var({color})\" stroke-width=\"1.6\" points=\""
        );
        for p in drawn(points) {
            let _ = write!(page, "{:.1},{:.1} ", x(p.at_ms), y(value(p)));
        }
        page.push_str("\"/>\n");
    };
    let rss = points.iter().any(|p| p.rss_bytes != p.memory_bytes);
    if rss {
        polyline(page, "rss", "--rss", &|p: &Point| p.rss_bytes);
    }
    polyline(page, "memory", "--mem", &|p: &Point| p.memory_bytes);
    let live = points.iter().any(|p| p.live_bytes.is_some());
    if live {
        polyline(page, "live-bytes", "--live", &|p: &Point| {
            p.live_bytes.unwrap_or(0)
        });
    }
    // Sessions on the right axis.
    let most = points.iter().filter_map(|p| p.sessions).max();
    if let Some(most) = most {
        let most = most.max(1) as f64;
        let ys = |n: u32| TOP + (1.0 - n as f64 / most) * (HEIGHT - TOP - BOTTOM);
        let _ = write!(
            page,
            "<polyline id=\"sessions\" fill=\"none\" stroke=\"var(--ses)\" stroke-width=\"1.2\" points=\""
        );
        for p in drawn(points) {
            if let Some(n) = p.sessions {
                let _ = write!(page, "{:.1},{:.1} ", x(p.at_ms), ys(n));
            }
        }
        let _ = writeln!(
            page,
            // The right axis's top, right-aligned so that it stays inside the chart.
            "\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} sessions</text>",
            WIDTH - 2.0,
            TOP + 10.0,
            most
        );
    }
    page.push_str("</svg>\n");
    legend(
        page,
        status.settings.memory.as_str(),
        rss,
        live,
        most.is_some(),
    );
}

/// What each line of the chart is.
fn legend(page: &mut String, deciding: &str, rss: bool, live: bool, sessions: bool) {
    let key = |page: &mut String, color: &str, what: &str| {
        let _ = write!(
            page,
            "<span style=\"color:var({color})\">&#9473;</span> {what} &nbsp; "
        );
    };
    page.push_str("<p class=\"muted\" id=\"legend\">");
    key(page, "--mem", &format!("{deciding} (decides)"));
    if rss {
        key(page, "--rss", "rss");
    }
    if live {
        key(page, "--live", "live, as the workload reports it");
    }
    if sessions {
        key(page, "--ses", "sessions (right axis)");
    }
    key(page, "--thr", "threshold");
    page.push_str("</p>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ThresholdStatus;

    const MI: u64 = 1 << 20;

    /// A status with this history, under a 100 MiB threshold.
    fn with_history(history: Vec<Point>) -> Status {
        Status {
            threshold: ThresholdStatus {
                bytes: 100 * MI,
                ..ThresholdStatus::default()
            },
            history: history.into(),
            ..Status::default()
        }
    }

    fn point(at_s: u64, mib: u64, state: State) -> Point {
        Point {
            at_ms: at_s * 1000,
            memory_bytes: mib * MI,
            rss_bytes: mib * MI,
            anon_bytes: None,
            sessions: Some(2),
            live_bytes: None,
            state,
            incarnation: 1,
        }
    }

    #[test]
    fn the_page_draws_memory_the_threshold_and_the_draining_band() {
        let history: Vec<Point> = (0..60)
            .map(|s| {
                let state = match s {
                    0..20 => State::Healthy,
                    20..40 => State::Elevated,
                    _ => State::Draining,
                };
                point(s, if s < 20 { 50 } else { 150 }, state)
            })
            .collect();
        let status = Status {
            state: State::Draining,
            reason: "rss <b>150</b> MiB over threshold".into(),
            ..with_history(history)
        };
        let page = render(&status);
        assert!(
            page.contains("<polyline id=\"memory\""),
            "the memory series"
        );
        assert!(
            page.contains("<line id=\"threshold\""),
            "the threshold line"
        );
        assert!(page.contains("class=\"band draining\""), "a draining band");
        assert!(page.contains("class=\"band elevated\""));
        assert!(
            page.contains("<polyline id=\"sessions\""),
            "sessions on a second axis"
        );
        assert!(
            !page.contains("id=\"live-bytes\""),
            "no live series when the target does not report it"
        );
        assert!(page.contains(">draining</span>"));
        assert!(page.contains("rss &lt;b&gt;150"), "the reason is escaped");
        assert!(page.len() < 64 * 1024);
    }

    #[test]
    fn the_page_says_the_forecast_or_why_there_is_none() {
        let none = Status {
            forecast: crate::status::ForecastStatus {
                said: "no forecast yet: 2h of history in 24 floors".into(),
                ..Default::default()
            },
            ..with_history(vec![point(0, 50, State::Healthy)])
        };
        assert!(render(&none).contains(
            "<p class=\"muted\" id=\"forecast\">no forecast yet: 2h of history in 24 floors</p>"
        ));
        let some = Status {
            forecast: crate::status::ForecastStatus {
                threshold_in_seconds: Some(10_800.0),
                said: "at this rate, over the threshold in about 3h (2h to 5h)".into(),
                ..Default::default()
            },
            ..with_history(vec![point(0, 50, State::Healthy)])
        };
        assert!(
            render(&some).contains(">at this rate, over the threshold in about 3h (2h to 5h)</p>")
        );
    }

    #[test]
    fn the_page_tells_how_long_until_the_next_decision() {
        let settings = crate::status::Settings {
            sustain: "5m".into(),
            min_drain: "1m".into(),
            drain_timeout: "1h".into(),
            ..crate::status::Settings::default()
        };
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let status = |state, sessions| Status {
            state,
            since: crate::units::timestamp(since),
            sessions,
            over_threshold_seconds: 60.0,
            settings: std::sync::Arc::new(settings.clone()),
            ..Status::default()
        };
        let at = |secs| since + Duration::from_secs(secs);
        assert_eq!(
            next_decision(&status(State::Elevated, None), at(60)).unwrap(),
            "drains in 240s if memory stays over the threshold (--sustain 5m)"
        );
        assert_eq!(
            next_decision(&status(State::Draining, Some(3)), at(20)).unwrap(),
            "recycles once no session is left, not before 40s from now (--min-drain 1m), \
             and at the latest in 59m 40s (--drain-timeout 1h)"
        );
        assert_eq!(
            next_decision(&status(State::Draining, Some(3)), at(600)).unwrap(),
            "recycles as soon as no session is left, and at the latest in 50m (--drain-timeout 1h)"
        );
        assert_eq!(
            next_decision(&status(State::Draining, None), at(600)).unwrap(),
            "recycles at the latest in 50m (--drain-timeout 1h): the session count is unknown"
        );
        assert_eq!(next_decision(&status(State::Healthy, None), at(600)), None);
    }

    #[test]
    fn two_thousand_samples_stay_under_the_size_budget() {
        // Every series drawn: memory, rss, live and sessions.
        let history: Vec<Point> = (0..2000)
            .map(|s| Point {
                rss_bytes: (60 + s % 90) * MI,
                live_bytes: Some(s % 7 * MI),
                ..point(s, 50 + s % 90, State::Healthy)
            })
            .collect();
        let page = render(&with_history(history));
        for series in ["memory", "rss", "live-bytes", "sessions"] {
            assert!(
                page.contains(&format!("<polyline id=\"{series}\"")),
                "{series}"
            );
        }
        assert!(
            page.contains("live, as the workload reports it"),
            "in the legend"
        );
        assert!(page.len() < 64 * 1024, "{} bytes", page.len());
    }
}
