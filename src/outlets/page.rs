//! The status page (`GET /`): what an operator paged at 3 a.m. looks at.
//!
//! One small HTML page, rendered on the server from the published snapshot: no external
//! asset and no script framework, so it works air-gapped and through `kubectl port-forward`.
//! An SVG chart draws the deciding memory figure (and rss beside it when they differ), the
//! threshold, critical and limit lines, shaded bands where the target was elevated, draining,
//! stalled or to be recycled, a mark at each restart, the forecast's trend through the floors
//! (the line its sentence describes) while there is one, and the bytes in use the target
//! reports of itself when it does (the demo's workload) as an area under resident memory, so
//! that fragmentation shows as resident memory high above it. ("In use", not "live": live is
//! the liveness probe's word.) The session count has a lane of its
//! own below, on its own axis, so that it never crosses the memory lines. Gridlines fall on
//! round figures and round times of day (UTC, as the transitions are stamped), and a legend
//! under the chart names each line and band it drew, in the chart's own colours and dashes:
//! a page read at a glance by someone who has never seen it.
//! Beside it: the state, the reason, ready and live, the fleet's state with `--fleet` or
//! `--events` (waiting for a drain slot and why, holding one, the API server when it cannot
//! be reached), the allocator (with a hint on glibc), the last transitions, and links to `/status`, `/metrics` and `/history.json`. It reloads itself
//! every interval (a meta refresh), and follows the reader's light or dark scheme.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::policy::State;
use crate::status::{FleetStatus, Point, Status};
use crate::units::{Bytes, Human};

const WIDTH: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
/// The memory lane: memory, live bytes and the threshold lines.
const TOP: f64 = 10.0;
const MEMORY_BOTTOM: f64 = 210.0;
/// The sessions lane below it, on an axis of its own, when there is a session count: tall
/// enough (100 units, at least as many pixels at the page's width) to tell 1 from 10.
const SESSIONS_TOP: f64 = 234.0;
const SESSIONS_BOTTOM: f64 = 334.0;
/// Below the lowest lane: the time axis's labels.
const AXIS_LABELS: f64 = 20.0;
/// Points drawn per series at most: more would not show on 760 pixels, and the page stays
/// small.
const MAX_DRAWN: usize = 760;
/// The most gridlines an axis gets: enough to read a value off, few enough to stay apart.
const MOST_TICKS: u64 = 8;
/// Half the width of an `HH:MM:SS` label at the chart's font size, and a little room.
const TICK_LABEL_HALF_WIDTH: f64 = 28.0;

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
  --mem:#1f6feb; --rss:#8fb4f0; --thr:#d29922; --crit:#cf222e; --lim:#888; --ses:#2da44e; --live:#8250df; --fc:#bf3989; }}
@media (prefers-color-scheme: dark) {{ :root {{ --fg:#e6e6e6; --bg:#111; --muted:#999;
  --grid:#333; --mem:#58a6ff; --rss:#2f5a8f; --ses:#3fb950; --live:#bc8cff; --fc:#ff80c8; }} }}
body {{ font: 15px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 0 auto; padding: 12px; max-width: 820px; }}
h1 {{ font-size: 20px; margin: 4px 0; }} .muted {{ color: var(--muted); }}
.state {{ display: inline-block; padding: 2px 8px; border-radius: 4px; font-weight: 600; }}
.s-healthy {{ background:#2da44e33; }} .s-elevated {{ background:#d2992233; }}
.s-draining, .s-stalled {{ background:#fb8f4433; }} .s-recycle {{ background:#cf222e33; }}
.s-lost, .s-starting {{ background:#8883; }}
svg {{ width: 100%; height: auto; }} svg text {{ fill: var(--muted); font-size: 11px; }}
svg text.lane {{ font-weight: 600; fill: var(--ses); }}
#legend {{ display: flex; flex-wrap: wrap; gap: 2px 16px; font-size: 13px; margin: 4px 0 8px; }}
.key svg {{ width: 24px; vertical-align: middle; }}
.band.elevated {{ fill:#d29922; opacity:.12; }} .band.draining {{ fill:#fb8f44; opacity:.22; }}
.band.stalled {{ fill:#a371f7; opacity:.2; }} .band.recycle {{ fill:#cf222e; opacity:.22; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td {{ border-top: 1px solid var(--grid); padding: 3px 6px; vertical-align: top; }}
td.at {{ white-space: nowrap; }}
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
    if let Some(problem) = &status.memory_problem {
        let _ = writeln!(
            page,
            "<p id=\"problem\">memory problem: <b>{}</b> &mdash; {}</p>",
            problem.kind.as_str().replace('_', " "),
            esc(&problem.says)
        );
    }
    if let Some(fleet) = &status.fleet {
        let _ = writeln!(
            page,
            "<p class=\"muted\" id=\"fleet\">{}</p>",
            esc(&fleet_line(fleet))
        );
    }
    if let Some(t) = &status.target {
        let allocator = t.allocator.as_str();
        let hint = if allocator == "glibc" {
            " &mdash; glibc's malloc fragments: preload jemalloc (deploy/kurento-jemalloc)"
        } else {
            ""
        };
        let threads = status
            .memory
            .as_ref()
            .and_then(|m| m.sample.threads)
            .map_or(String::new(), |n| {
                format!(" &middot; threads: <b id=\"threads\">{n}</b>")
            });
        let _ = writeln!(
            page,
            "<p class=\"muted\">allocator: <b id=\"allocator\">{allocator}</b>{hint}{threads}</p>"
        );
    }
    chart(&mut page, status);
    page.push_str("<h2 style=\"font-size:16px\">Last transitions</h2><table id=\"transitions\">\n");
    for t in status.transitions.iter().rev().take(12) {
        let _ = writeln!(
            page,
            "<tr><td class=\"muted at\">{}</td><td>{} &rarr; <b>{}</b></td><td>{}</td></tr>",
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

/// The fleet in words: whether this instance waits for a drain slot and why, holds one, or
/// needs none; the API server when it cannot be reached; the Events sent.
fn fleet_line(fleet: &FleetStatus) -> String {
    let mut parts = Vec::new();
    match &fleet.budget {
        Some(budget) => {
            let name = fleet
                .fleet
                .as_deref()
                .map_or("fleet".to_string(), |name| format!("fleet {name}"));
            let slots = match fleet.slots {
                Some(1) => ": 1 slot".to_string(),
                Some(n) => format!(": {n} slots"),
                None => String::new(),
            };
            let state = match (&fleet.holding, &fleet.gate) {
                (Some(slot), _) => format!("holding drain slot {slot}"),
                (None, Some(gate)) if fleet.waiting => gate.clone(),
                (None, None) if fleet.waiting => "waiting for a drain slot".to_string(),
                (None, _) => "no drain waiting for a slot".to_string(),
            };
            parts.push(format!("{name} (drain budget {budget}{slots}): {state}"));
        }
        None => parts.push(format!(
            "Kubernetes Events on pod {}/{}",
            fleet.namespace, fleet.pod
        )),
    }
    // A wait for the API server says so already.
    let told = fleet.waiting
        && fleet
            .gate
            .as_deref()
            .is_some_and(|g| g.contains("API server"));
    if let Some(why) = fleet.check.strip_prefix("refused: ") {
        parts.push(format!(
            "the API server refused the start check: {why}; not ready until it passes"
        ));
    }
    if fleet.api.starts_with("unreachable") && !told {
        parts.push(format!(
            "API server {} ({})",
            fleet.api, fleet.when_unreachable
        ));
    }
    if fleet.events {
        parts.push(format!(
            "Events: {} sent, {} dropped",
            fleet.events_sent, fleet.events_dropped
        ));
    }
    parts.join("; ")
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
fn drawn_points(points: &[Point]) -> impl Iterator<Item = &Point> {
    let step = points.len().div_ceil(MAX_DRAWN).max(1);
    let last = points.len().saturating_sub(1);
    points
        .iter()
        .enumerate()
        .filter(move |(i, _)| i % step == 0 || *i == last)
        .map(|(_, p)| p)
}

/// A step for the memory axis: 1, 2, 5, 10, 20, 25, 50, 100, 200, 250 or 500 KiB, MiB or GiB,
/// so that at most about five gridlines cover `top` bytes.
fn byte_step(top: u64) -> u64 {
    const MULTIPLES: [u64; 11] = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500];
    let wanted = top / 5;
    [1u64 << 10, 1 << 20, 1 << 30, 1 << 40]
        .iter()
        .flat_map(|unit| MULTIPLES.iter().map(move |m| m * unit))
        .find(|step| *step >= wanted)
        .unwrap_or(1 << 40)
        .max(1)
}

/// A round figure in its own unit: `250 MiB`, `1 GiB`, `512 KiB`.
fn short_bytes(bytes: u64) -> String {
    for (unit, name) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    Bytes(bytes).to_string()
}

/// A step for the time axis, in seconds: a round one, giving at most [`MOST_TICKS`] ticks
/// over `span_s` seconds, whatever the span (a wall clock jumped forward by years makes it
/// long): past half a day, whole days.
fn time_step(span_s: u64) -> u64 {
    const STEPS: [u64; 16] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200,
    ];
    STEPS
        .iter()
        .copied()
        .find(|step| span_s / step < MOST_TICKS)
        .unwrap_or_else(|| (span_s / MOST_TICKS + 1).div_ceil(86400) * 86400)
}

/// The time of day (UTC) at `at_ms`, to the second when ticks are seconds apart.
fn clock(at_ms: u64, step_s: u64) -> String {
    let of_day = at_ms / 1000 % 86400;
    let (h, m, s) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    if step_s < 60 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// The shaded states, in legend order, with what each means.
const BANDS: [(State, &str); 4] = [
    (
        State::Elevated,
        "elevated: over the threshold, not yet for --sustain",
    ),
    (State::Draining, "draining: /ready 503, no new sessions"),
    (State::Stalled, "stalled: the server stopped answering"),
    (State::Recycle, "recycle: /healthz 503, restart the server"),
];

/// What the chart drew, for its legend.
#[derive(Default)]
struct Drawn {
    bands: Vec<State>,
    rss: bool,
    live: bool,
    sessions: bool,
    critical: bool,
    limit: bool,
    restart: bool,
    forecast: Option<f64>,
}

fn chart(page: &mut String, status: &Status) {
    let points: &[Point] = &status.history;
    if points.is_empty() {
        let _ = writeln!(
            page,
            "<svg id=\"chart\" viewBox=\"0 0 {WIDTH} {MEMORY_BOTTOM}\" role=\"img\" \
             aria-label=\"memory over time\"><text x=\"80\" y=\"100\">no samples yet</text></svg>"
        );
        return;
    }
    let mut drawn = Drawn {
        sessions: points.iter().any(|p| p.sessions.is_some()),
        rss: points.iter().any(|p| p.rss_bytes != p.memory_bytes),
        live: points.iter().any(|p| p.live_bytes.is_some()),
        ..Drawn::default()
    };
    let bottom = if drawn.sessions {
        SESSIONS_BOTTOM
    } else {
        MEMORY_BOTTOM
    };
    let height = bottom + AXIS_LABELS;
    let _ = writeln!(
        page,
        "<svg id=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"memory over time\">"
    );
    let threshold = status.threshold.bytes;
    let critical = status.threshold.critical_bytes;
    let limit = status.threshold.limit.bytes;
    let peak = points
        .iter()
        .map(|p| {
            p.memory_bytes
                .max(p.rss_bytes)
                .max(p.live_bytes.unwrap_or(0))
        })
        .max()
        .unwrap_or(0);
    let mut top = peak.max(threshold).max(critical.unwrap_or(0));
    // The limit is drawn when it is known and near: a host's MemTotal would flatten everything.
    drawn.limit = limit > 0 && limit <= top.saturating_mul(2);
    if drawn.limit {
        top = top.max(limit);
    }
    // Up to the next gridline, and a little room above the highest line.
    let step = byte_step(top.saturating_add(top / 16));
    let top = (top.saturating_add(top / 16) / step + 1).saturating_mul(step);
    let (t0, t1) = (
        points[0].at_ms,
        points[points.len() - 1].at_ms.max(points[0].at_ms + 1),
    );
    let x = |at: u64| LEFT + (at - t0) as f64 / (t1 - t0) as f64 * (WIDTH - LEFT - RIGHT);
    let y = |bytes: u64| TOP + (1.0 - bytes as f64 / top as f64) * (MEMORY_BOTTOM - TOP);
    // Bands, one rect per run of a shaded state, across both lanes.
    let mut run: Option<(State, u64)> = None;
    let mut close = |page: &mut String, state: State, from: u64, to: u64| {
        if !drawn.bands.contains(&state) {
            drawn.bands.push(state);
        }
        let _ = writeln!(
            page,
            "<rect class=\"band {}\" x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"/>",
            state.as_str(),
            x(from),
            (x(to) - x(from)).max(2.0),
            bottom - TOP
        );
    };
    for p in points {
        let shaded = BANDS.iter().any(|(s, _)| *s == p.state);
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
    // The memory axis: a gridline and a label at each round figure.
    let right = WIDTH - RIGHT;
    for k in 0..=top / step {
        let (bytes, at) = (k * step, y(k * step));
        let _ = writeln!(
            page,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"var(--grid)\"/>\
             <text x=\"{label_x}\" y=\"{label_at:.1}\" text-anchor=\"end\">{label}</text>",
            label_x = LEFT - 6.0,
            label_at = at + 4.0,
            label = short_bytes(bytes)
        );
    }
    // The time axis: a tick at each round time of day, labelled in UTC.
    let step_s = time_step((t1 - t0) / 1000);
    let step_ms = step_s * 1000;
    let mut tick = t0.div_ceil(step_ms) * step_ms;
    let _ = writeln!(
        page,
        "<g id=\"time-axis\"><line x1=\"{LEFT}\" x2=\"{right}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"var(--muted)\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">UTC</text>",
        LEFT - 6.0,
        bottom + 14.0
    );
    while tick <= t1 {
        let at = x(tick);
        let _ = write!(
            page,
            "<line class=\"tick\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{TOP}\" y2=\"{bottom}\" stroke=\"var(--grid)\"/>\
             <line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{bottom}\" y2=\"{}\" stroke=\"var(--muted)\"/>",
            bottom + 4.0,
        );
        // A label centred on a tick at the very left would run into the axis's "UTC".
        if at - LEFT >= TICK_LABEL_HALF_WIDTH {
            let _ = write!(
                page,
                "<text class=\"tick-label\" x=\"{at:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                bottom + 14.0,
                clock(tick, step_s)
            );
        }
        page.push('\n');
        tick += step_ms;
    }
    page.push_str("</g>\n");
    let hline = |page: &mut String, id: &str, bytes: u64, color: &str, label: &str| {
        let at = y(bytes);
        let _ = writeln!(
            page,
            "<line id=\"{id}\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"var({color})\" stroke-dasharray=\"6 4\" stroke-width=\"1.4\"/>\
             <text x=\"{text_x}\" y=\"{text_y:.1}\">{label} {size}</text>",
            text_x = LEFT + 4.0,
            text_y = at - 3.0,
            size = Bytes(bytes)
        );
    };
    hline(page, "threshold", threshold, "--thr", "threshold");
    if let Some(c) = critical {
        drawn.critical = true;
        hline(page, "critical", c, "--crit", "critical");
    }
    if drawn.limit {
        hline(page, "limit", limit, "--lim", "limit");
    }
    // The forecast's trend through the floors of this incarnation, up to its floor now: the
    // line the forecast's sentence describes, rising at its rate.
    if let (Some(floor), Some(per_hour)) = (
        status.forecast.floor_bytes,
        status.forecast.rising_bytes_per_hour,
    ) && per_hour > 0.0
    {
        let last = points[points.len() - 1].incarnation;
        let from = points
            .iter()
            .find(|p| p.incarnation == last)
            .map_or(t0, |p| p.at_ms);
        // Not below zero: where the line would start under the axis, it starts on it.
        let rise_ms = floor as f64 / per_hour * 3_600_000.0;
        let from = from.max(t1.saturating_sub(rise_ms as u64));
        let at_from = floor as f64 - per_hour * (t1 - from) as f64 / 3_600_000.0;
        drawn.forecast = Some(per_hour);
        let _ = writeln!(
            page,
            "<line id=\"forecast-trend\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" \
             stroke=\"var(--fc)\" stroke-dasharray=\"2 3\" stroke-width=\"2\"/>",
            x(from),
            x(t1),
            y(at_from.max(0.0) as u64),
            y(floor)
        );
    }
    // Restarts, across both lanes.
    for pair in points.windows(2) {
        if pair[1].incarnation != pair[0].incarnation {
            drawn.restart = true;
            let _ = writeln!(
                page,
                "<line class=\"restart\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{bottom}\" \
                 stroke=\"var(--crit)\" stroke-width=\"2\"/>",
                x(pair[1].at_ms),
            );
        }
    }
    let polyline = |page: &mut String, id: &str, color: &str, value: &dyn Fn(&Point) -> u64| {
        let _ = write!(
            page,
            "<polyline id=\"{id}\" fill=\"none\" stroke=\"var({color})\" stroke-width=\"1.8\" points=\""
        );
        for p in drawn_points(points) {
            let _ = write!(page, "{:.1},{:.1} ", x(p.at_ms), y(value(p)));
        }
        page.push_str("\"/>\n");
    };
    // Live bytes as an area under resident memory: the part of it the workload holds; what
    // stands above the area is what the allocator keeps.
    if drawn.live {
        let live = |p: &Point| p.live_bytes.unwrap_or(0);
        let _ = write!(
            page,
            "<polygon id=\"in-use-area\" fill=\"var(--live)\" opacity=\".28\" points=\"{:.1},{:.1} ",
            x(t0),
            y(0)
        );
        for p in drawn_points(points) {
            let _ = write!(page, "{:.1},{:.1} ", x(p.at_ms), y(live(p)));
        }
        let _ = writeln!(page, "{:.1},{:.1}\"/>", x(t1), y(0));
    }
    if drawn.rss {
        polyline(page, "rss", "--rss", &|p: &Point| p.rss_bytes);
    }
    polyline(page, "memory", "--mem", &|p: &Point| p.memory_bytes);
    if drawn.live {
        polyline(page, "in-use", "--live", &|p: &Point| {
            p.live_bytes.unwrap_or(0)
        });
    }
    // Sessions in a lane of their own, on their own axis: 0 and the most there were.
    if drawn.sessions {
        let most = points
            .iter()
            .filter_map(|p| p.sessions)
            .max()
            .unwrap_or(0)
            .max(1);
        let ys = |n: u32| {
            SESSIONS_TOP + (1.0 - f64::from(n) / f64::from(most)) * (SESSIONS_BOTTOM - SESSIONS_TOP)
        };
        let _ = writeln!(
            page,
            "<g id=\"sessions-axis\"><line x1=\"{LEFT}\" x2=\"{right}\" y1=\"{top_at}\" y2=\"{top_at}\" stroke=\"var(--grid)\"/>\
             <text x=\"{label_x}\" y=\"{}\" text-anchor=\"end\">{most}</text>\
             <text x=\"{label_x}\" y=\"{}\" text-anchor=\"end\">0</text>\
             <text x=\"{label_x}\" y=\"{}\" text-anchor=\"end\" class=\"lane\">sessions</text></g>",
            SESSIONS_TOP + 4.0,
            SESSIONS_BOTTOM,
            (SESSIONS_TOP + SESSIONS_BOTTOM) / 2.0 + 4.0,
            top_at = SESSIONS_TOP,
            label_x = LEFT - 6.0,
        );
        let _ = write!(
            page,
            "<polyline id=\"sessions\" fill=\"none\" stroke=\"var(--ses)\" stroke-width=\"1.4\" points=\""
        );
        for p in drawn_points(points) {
            if let Some(n) = p.sessions {
                let _ = write!(page, "{:.1},{:.1} ", x(p.at_ms), ys(n));
            }
        }
        page.push_str("\"/>\n");
    }
    page.push_str("</svg>\n");
    legend(page, status.settings.memory.as_str(), &drawn);
}

/// What each line, area and band of the chart is, drawn as the chart draws it.
fn legend(page: &mut String, deciding: &str, drawn: &Drawn) {
    let key = |page: &mut String, id: &str, swatch: &str, what: &str| {
        let _ = writeln!(
            page,
            "<span class=\"key\" id=\"key-{id}\"><svg viewBox=\"0 0 24 12\" width=\"24\" height=\"12\">{swatch}</svg> {what}</span>"
        );
    };
    let line = |color: &str, dash: &str| {
        format!(
            "<line x1=\"0\" x2=\"24\" y1=\"6\" y2=\"6\" stroke=\"var({color})\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>"
        )
    };
    page.push_str("<div class=\"muted\" id=\"legend\">\n");
    let memory = if deciding == "rss" {
        "rss: resident memory, the figure that decides".to_string()
    } else {
        format!("{deciding}: the figure that decides")
    };
    key(page, "memory", &line("--mem", "none"), &memory);
    if drawn.rss {
        key(page, "rss", &line("--rss", "none"), "rss: resident memory");
    }
    if drawn.live {
        // "in use", not "live": live is the liveness probe's word (live: false above).
        key(
            page,
            "in-use",
            "<rect width=\"24\" height=\"12\" fill=\"var(--live)\" opacity=\".28\"/><line x1=\"0\" x2=\"24\" y1=\"1\" y2=\"1\" stroke=\"var(--live)\" stroke-width=\"2\"/>",
            "in use: what the workload's sessions hold, as it reports them (a moment apart \
             from resident, so a wave's peak can reach above it); resident above it is heap \
             the allocator keeps",
        );
    }
    key(
        page,
        "threshold",
        &line("--thr", "6 4"),
        "threshold: over it for --sustain, the server drains",
    );
    if drawn.critical {
        key(
            page,
            "critical",
            &line("--crit", "6 4"),
            "critical: one sample over it recycles at once",
        );
    }
    if drawn.limit {
        key(
            page,
            "limit",
            &line("--lim", "6 4"),
            "limit: the memory limit",
        );
    }
    if let Some(per_hour) = drawn.forecast {
        key(
            page,
            "forecast",
            &line("--fc", "2 3"),
            &format!(
                "forecast: the trend of the memory kept with no session, rising {}/h and \
                 carried on to now at that rate (through a pause too), as the forecast above says",
                Bytes(per_hour as u64)
            ),
        );
    }
    if drawn.restart {
        key(
            page,
            "restart",
            "<line x1=\"12\" x2=\"12\" y1=\"0\" y2=\"12\" stroke=\"var(--crit)\" stroke-width=\"2\"/>",
            "a restart of the server",
        );
    }
    if drawn.sessions {
        key(
            page,
            "sessions",
            &line("--ses", "none"),
            "sessions, in the lower lane on their own axis",
        );
    }
    for (state, what) in BANDS {
        if drawn.bands.contains(&state) {
            key(
                page,
                state.as_str(),
                &format!(
                    "<rect class=\"band {}\" width=\"24\" height=\"12\"/>",
                    state.as_str()
                ),
                what,
            );
        }
    }
    page.push_str("</div>\n");
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
            threads: None,
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
            "sessions in a lane of their own"
        );
        assert!(
            !page.contains("id=\"in-use\""),
            "no in-use series when the target does not report it"
        );
        assert!(page.contains(">draining</span>"));
        assert!(page.contains("rss &lt;b&gt;150"), "the reason is escaped");
        assert!(page.len() < 64 * 1024);
    }

    #[test]
    fn the_forecast_is_drawn_as_the_line_its_sentence_describes() {
        // Floors rising 1 MiB a second; the forecast puts the floor at 89 MiB now, where memory is.
        let history: Vec<Point> = (0..60).map(|s| point(s, 30 + s, State::Healthy)).collect();
        let status = Status {
            forecast: crate::status::ForecastStatus {
                threshold_in_seconds: Some(10.0),
                floor_bytes: Some(89 * MI),
                rising_bytes_per_hour: Some((3600 * MI) as f64),
                said: "at this rate, over the threshold in about 10s".into(),
                ..Default::default()
            },
            ..with_history(history.clone())
        };
        let page = render(&status);
        let line = page
            .split("<line id=\"forecast-trend\"")
            .nth(1)
            .and_then(|rest| rest.split("/>").next())
            .unwrap_or_else(|| panic!("a forecast line: {page}"));
        let attr = |name: &str| -> f64 {
            line.split(&format!(" {name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap()
                .parse()
                .unwrap()
        };
        // Where memory is at the first sample and the last.
        let memory = ys(&page, "memory");
        let (first, last) = (memory[0], memory[memory.len() - 1]);
        assert!(
            (attr("y2") - last).abs() < 1.0,
            "it ends at the floor now, where memory is: {line}"
        );
        assert!(
            (attr("y1") - first).abs() < 1.0,
            "it starts where the rate puts it a minute earlier: {line}, memory from {first}"
        );
        assert!(
            page.contains("id=\"key-forecast\"") && page.contains("rising 3.52 GiB/h"),
            "the legend says its rate as the sentence does"
        );
        let without = render(&with_history(history));
        assert!(!without.contains("forecast-trend"), "no forecast, no line");
    }

    #[test]
    fn live_means_the_liveness_probe_alone() {
        let history: Vec<Point> = (0..30)
            .map(|s| Point {
                live_bytes: Some(MI),
                ..point(s, 50, State::Healthy)
            })
            .collect();
        let page = render(&with_history(history));
        assert!(
            page.contains("live: <b id=\"live\">"),
            "liveness, beside ready"
        );
        assert!(
            page.contains("in use: what the workload's sessions hold")
                && page.contains("<polyline id=\"in-use\""),
            "the bytes the workload holds are in use"
        );
        let words = page.matches("live").count() - page.matches("--live").count();
        assert_eq!(
            words,
            page.matches("live: <b id=\"live\">").count() * 2,
            "no other \"live\" on the page"
        );
    }

    #[test]
    fn the_sessions_lane_is_tall_and_timestamps_do_not_wrap() {
        let page = render(&with_history(story()));
        let sessions = ys(&page, "sessions");
        let spread = sessions.iter().copied().fold(f64::MIN, f64::max)
            - sessions.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            spread >= 90.0,
            "0 to 3 sessions span at least 90 of the chart's 760 units: {spread}"
        );
        assert!(page.contains("td.at { white-space: nowrap; }"));
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
    fn the_page_says_the_fleets_state_in_words_and_nothing_with_the_fleet_off() {
        let page = |fleet: Option<FleetStatus>| {
            render(&Status {
                fleet,
                ..with_history(vec![point(0, 150, State::Elevated)])
            })
        };
        assert!(
            !page(None).contains("id=\"fleet\""),
            "no fleet line with the fleet off"
        );
        let fleet = FleetStatus {
            kind: "kubernetes",
            fleet: Some("kms".into()),
            pod: "kms-0".into(),
            namespace: "media".into(),
            budget: Some("1".into()),
            slots: Some(1),
            api: "reachable".into(),
            events: true,
            events_sent: 3,
            when_unreachable: "no new drain starts through the fleet; a drain holding a slot \
                               goes on; --critical still recycles",
            ..FleetStatus::default()
        };
        let waiting = FleetStatus {
            waiting: true,
            gate: Some("waiting for a drain slot: held by kms-1".into()),
            ..fleet.clone()
        };
        assert!(page(Some(waiting)).contains(
            "<p class=\"muted\" id=\"fleet\">fleet kms (drain budget 1: 1 slot): waiting for a \
             drain slot: held by kms-1; Events: 3 sent, 0 dropped</p>"
        ));
        let holding = FleetStatus {
            holding: Some("memprobe-kms-slot-0".into()),
            budget: Some("25%".into()),
            slots: Some(2),
            ..fleet.clone()
        };
        assert!(page(Some(holding)).contains(
            ">fleet kms (drain budget 25%: 2 slots): holding drain slot memprobe-kms-slot-0; \
             Events: 3 sent, 0 dropped</p>"
        ));
        let away = FleetStatus {
            api: "unreachable: connection refused".into(),
            events: false,
            ..fleet.clone()
        };
        assert!(page(Some(away)).contains(
            ">fleet kms (drain budget 1: 1 slot): no drain waiting for a slot; API server \
             unreachable: connection refused (no new drain starts through the fleet; a drain \
             holding a slot goes on; --critical still recycles)</p>"
        ));
        let waiting_for_the_api = FleetStatus {
            api: "unreachable: connection refused".into(),
            waiting: true,
            gate: Some(
                "waiting for a drain slot: the API server cannot be reached (connection \
                 refused); no drain starts through the fleet until it can"
                    .into(),
            ),
            events: false,
            ..fleet.clone()
        };
        let text = page(Some(waiting_for_the_api));
        assert_eq!(
            text.matches("connection refused").count(),
            1,
            "the wait says why once: {text}"
        );
        let refused = FleetStatus {
            api: "refused: reading pod media/kms-0: 403 Forbidden: …".into(),
            check: "refused: reading pod media/kms-0: 403 Forbidden: …".into(),
            events: false,
            ..fleet.clone()
        };
        assert!(page(Some(refused)).contains(
            ">fleet kms (drain budget 1: 1 slot): no drain waiting for a slot; the API server \
             refused the start check: reading pod media/kms-0: 403 Forbidden: …; not ready \
             until it passes</p>"
        ));
        let events_alone = FleetStatus {
            fleet: None,
            budget: None,
            slots: None,
            events_dropped: 1,
            ..fleet
        };
        assert!(
            page(Some(events_alone))
                .contains(">Kubernetes Events on pod media/kms-0; Events: 3 sent, 1 dropped</p>")
        );
        let escaped = FleetStatus {
            fleet: Some("kms".into()),
            budget: Some("1".into()),
            holding: Some("<b>".into()),
            ..FleetStatus::default()
        };
        assert!(page(Some(escaped)).contains("holding drain slot &lt;b&gt;"));
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
    fn a_clock_jumped_forward_by_years_keeps_the_page_under_the_size_budget() {
        // Half the history, then the wall clock jumps: 5 years, 300 years, 6,000 years.
        for jump_s in [5 * 365 * 86_400, 300 * 365 * 86_400, 6_000 * 365 * 86_400] {
            let history: Vec<Point> = (0..2000)
                .map(|s| {
                    let at_s = if s < 1000 { s } else { s + jump_s };
                    point(at_s, 50 + s % 90, State::Healthy)
                })
                .collect();
            let page = render(&with_history(history));
            let ticks = page.matches("class=\"tick\"").count();
            assert!(
                ticks as u64 <= MOST_TICKS,
                "{ticks} ticks over a span of {jump_s} s"
            );
            assert!(
                page.len() < 64 * 1024,
                "under 64 KiB whatever the span: {} bytes",
                page.len()
            );
        }
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
        for series in ["memory", "rss", "in-use", "sessions"] {
            assert!(
                page.contains(&format!("<polyline id=\"{series}\"")),
                "{series}"
            );
        }
        assert!(
            page.contains("id=\"key-in-use\"")
                && page.contains("in use: what the workload's sessions hold"),
            "in the legend"
        );
        assert!(page.len() < 64 * 1024, "{} bytes", page.len());
    }

    /// The y coordinates of a series as the page draws it.
    fn ys(page: &str, id: &str) -> Vec<f64> {
        let points = page
            .split(&format!("<polyline id=\"{id}\""))
            .nth(1)
            .and_then(|rest| rest.split("points=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        points
            .split_whitespace()
            .filter_map(|xy| xy.split_once(',')?.1.parse().ok())
            .collect()
    }

    #[test]
    fn axes_step_by_round_figures_and_times_of_day() {
        assert_eq!(byte_step(280 * MI), 100 * MI, "0, 100, 200, 300 MiB");
        assert_eq!(byte_step(1 << 30), 250 * MI);
        assert_eq!(byte_step(3 << 30), 1 << 30);
        assert_eq!(byte_step(600 << 10), 200 << 10);
        assert_eq!(byte_step(0), 1 << 10, "an empty chart still has a step");
        assert_eq!(short_bytes(250 * MI), "250 MiB");
        assert_eq!(short_bytes(1 << 30), "1 GiB");
        assert_eq!(short_bytes(512 << 10), "512 KiB");
        assert_eq!(short_bytes(0), "0 B");
        assert_eq!(time_step(53), 10, "a 53 s history: ticks every 10 s");
        assert_eq!(time_step(5), 1);
        assert_eq!(time_step(300), 60);
        assert_eq!(
            time_step(1800),
            300,
            "the demo's 30 minutes: every 5 minutes"
        );
        assert_eq!(time_step(2 * 86400), 43200);
        assert_eq!(time_step(7 * 86400), 86400);
        assert_eq!(
            time_step(10 * 86400),
            2 * 86400,
            "whole days past half a day, and never more ticks than MOST_TICKS"
        );
        assert_eq!(clock(1_800_000_123_000, 10), "08:02:03");
        assert_eq!(
            clock(1_800_000_123_000, 60),
            "08:02",
            "minutes apart: no seconds"
        );
    }

    /// Waves of sessions, a drain and a recycle, then a restart: the demo's story and after.
    fn story() -> Vec<Point> {
        (0..60)
            .map(|s| {
                let state = match s {
                    0..20 => State::Healthy,
                    20..30 => State::Elevated,
                    30..36 => State::Draining,
                    36..40 => State::Recycle,
                    _ => State::Healthy,
                };
                let mib = if s < 40 { 20 + s * 5 } else { 20 };
                Point {
                    sessions: Some((s % 4) as u32),
                    live_bytes: Some(if s % 2 == 0 { mib * MI } else { 2 * MI }),
                    incarnation: if s < 40 { 1 } else { 2 },
                    ..point(s, mib, state)
                }
            })
            .collect()
    }

    #[test]
    fn the_legend_names_every_band_and_line_drawn_and_nothing_else() {
        let page = render(&with_history(story()));
        for key in [
            "memory",
            "in-use",
            "threshold",
            "sessions",
            "restart",
            "elevated",
            "draining",
            "recycle",
        ] {
            assert!(page.contains(&format!("id=\"key-{key}\"")), "{key}");
        }
        for absent in ["stalled", "rss", "critical", "limit", "forecast"] {
            assert!(
                !page.contains(&format!("id=\"key-{absent}\"")),
                "no {absent} drawn, none in the legend"
            );
        }
        assert!(page.contains("draining: /ready 503, no new sessions"));
        assert!(
            page.contains("<rect class=\"band draining\" width=\"24\""),
            "each band's key is drawn as the band is"
        );
    }

    #[test]
    fn sessions_sit_in_a_lane_of_their_own_below_the_memory_lines() {
        let page = render(&with_history(story()));
        let lowest = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let highest = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        for series in ["memory", "in-use"] {
            assert!(lowest(&ys(&page, series)) <= MEMORY_BOTTOM, "{series}");
        }
        let sessions = ys(&page, "sessions");
        assert!(highest(&sessions) >= SESSIONS_TOP && lowest(&sessions) <= SESSIONS_BOTTOM);
        assert!(
            page.contains(">3</text>") && page.contains("class=\"lane\">sessions</text>"),
            "its own axis: the most sessions, and its name"
        );
        let without = with_history(
            story()
                .into_iter()
                .map(|p| Point {
                    sessions: None,
                    ..p
                })
                .collect(),
        );
        let page = render(&without);
        assert!(
            !page.contains("id=\"sessions-axis\"") && !page.contains("id=\"key-sessions\""),
            "no lane without a session count"
        );
    }

    #[test]
    fn the_time_axis_has_a_labelled_tick_every_round_step() {
        // 59 s of history from 08:02:03 UTC: a tick every 10 s, at 08:02:10 to 08:03:00.
        let history: Vec<Point> = (1_800_000_123..1_800_000_183)
            .map(|s| point(s, 50, State::Healthy))
            .collect();
        let page = render(&with_history(history));
        let labels: Vec<&str> = page
            .split("class=\"tick-label\"")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once('<'))
            .map(|(label, _)| label)
            .collect();
        assert_eq!(
            labels,
            [
                "08:02:10", "08:02:20", "08:02:30", "08:02:40", "08:02:50", "08:03:00"
            ]
        );
        assert!(page.contains(">UTC</text>"));
        // From 08:02:09: the tick at 08:02:10 is too near the axis's "UTC" for a label.
        let history: Vec<Point> = (1_800_000_129..1_800_000_183)
            .map(|s| point(s, 50, State::Healthy))
            .collect();
        let page = render(&with_history(history));
        assert_eq!(page.matches("<line class=\"tick\"").count(), 6);
        assert!(!page.contains(">08:02:10<") && page.contains(">08:02:20<"));
        let gridlines = page.matches("<line class=\"grid\"").count();
        assert!((3..=7).contains(&gridlines), "{gridlines} memory gridlines");
    }
}
