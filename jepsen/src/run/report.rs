//! The HTML report of a run (pure: history, verdict and metadata in, one self-contained
//! HTML string out, with inline SVG).
//!
//! Sections: the verdict and the run's parameters; for an invalid result the checker's
//! witness, with its operations outlined in red in the timeline and, for linearizability,
//! the failing key's ops outlined and the failing window shaded; op counts and latency
//! quantiles per function; **latency over time** (every completed op at its invocation
//! time, log scale, coloured ok/fail/info — Jepsen's latency-raw); **throughput over time**
//! per outcome (Jepsen's rate graph); and a **timeline** with one lane per worker (a
//! worker's successive processes share it) and every op as a bar from invocation to
//! completion. Nemesis faults are shaded bands on every plot.

use super::recorder::Event;
use crate::history::OpType;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// What the report says about the run besides the history.
#[derive(Debug, Clone, Default)]
pub struct ReportMeta {
    /// Heading.
    pub title: String,
    /// Key facts shown as a table (name, value).
    pub facts: Vec<(String, String)>,
    /// Worker count (timeline lanes: process mod concurrency).
    pub concurrency: usize,
    /// Warnings worth a look (crashed servers...).
    pub notes: Vec<String>,
}

/// One client operation, invocation to completion.
#[derive(Debug, Clone)]
struct Span {
    invoke_index: u64,
    completion_index: Option<u64>,
    process: u64,
    f: String,
    key: Option<u64>,
    start: f64,
    end: Option<f64>,
    kind: OpType,
    value: Json,
    result: Json,
    error: Option<String>,
}

/// A fault, from its start to its stop (or the end of the history).
#[derive(Debug, Clone, PartialEq)]
struct Band {
    kind: String,
    start: f64,
    end: f64,
    label: String,
}

const OK: &str = "#3d8fd9";
const FAIL: &str = "#e0569b";
const INFO: &str = "#f0a020";
const PENDING: &str = "#9a9a9a";
const ALERT: &str = "#d00000";

fn color(kind: OpType) -> &'static str {
    match kind {
        OpType::Ok => OK,
        OpType::Fail => FAIL,
        OpType::Info => INFO,
        OpType::Invoke => PENDING,
    }
}

fn band_color(kind: &str) -> &'static str {
    match kind {
        "partition" => "#f2b8b5",
        "kill" => "#c9b8e8",
        "pause" => "#b8d8f0",
        "clock" => "#f5dca0",
        "member" => "#b8e0c0",
        "transfer-leader" => "#e07b00",
        "crash" => "#d00000",
        _ => "#dddddd",
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn spans(events: &[Event]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events {
        let Some(p) = e.process() else { continue };
        if e.kind == OpType::Invoke {
            open.insert(p, out.len());
            out.push(Span {
                invoke_index: e.index,
                completion_index: None,
                process: p,
                f: e.f.clone(),
                key: e.key,
                start: secs(e.time),
                end: None,
                kind: OpType::Invoke,
                value: e.value.clone(),
                result: Json::Null,
                error: None,
            });
        } else if let Some(i) = open.remove(&p) {
            let s = &mut out[i];
            s.completion_index = Some(e.index);
            s.end = Some(secs(e.time));
            s.kind = e.kind;
            s.result = e.value.clone();
            s.error = e.error.clone();
        }
    }
    out
}

fn bands(events: &[Event], t_end: f64) -> Vec<Band> {
    let mut out = Vec::new();
    let mut open: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.process().is_none()) {
        let t = secs(e.time);
        if let Some(kind) = e.f.strip_prefix("start-") {
            open.insert(kind.to_string(), (t, describe_fault(&e.value)));
        } else if let Some(kind) = e.f.strip_prefix("stop-") {
            // A stop that failed (a removed node not added back yet) leaves the fault on.
            if e.value.get("error").is_some() {
                continue;
            }
            if let Some((start, label)) = open.remove(kind) {
                out.push(Band { kind: kind.to_string(), start, end: t, label });
            }
        } else {
            // Instantaneous: a leader transfer, a crash, a restart, a skipped fault.
            out.push(Band { kind: e.f.clone(), start: t, end: t, label: describe_fault(&e.value) });
        }
    }
    for (kind, (start, label)) in open {
        out.push(Band { kind, start, end: t_end, label });
    }
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

fn describe_fault(v: &Json) -> String {
    let mut parts = Vec::new();
    for field in ["shape", "targets", "mode", "node"] {
        if let Some(s) = v.get(field).and_then(Json::as_str) {
            parts.push(s.to_string());
        }
    }
    if let Some(ms) = v.get("offset-ms").and_then(Json::as_i64) {
        parts.push(format!("{ms:+} ms"));
    }
    if let (Some(g), Some(from), Some(to)) = (v.get("group"), v.get("from"), v.get("to")) {
        parts.push(format!("group {g}: {} → {}", from.as_str().unwrap_or("?"), to.as_str().unwrap_or("?")));
    }
    for field in ["reason", "error"] {
        if let Some(s) = v.get(field).and_then(Json::as_str) {
            parts.push(format!("{field}: {s}"));
        }
    }
    if let Some(s) = v.as_str() {
        parts.push(s.to_string());
    }
    if let Some(nodes) = v.get("nodes").and_then(Json::as_array) {
        parts.push(nodes.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(" "));
    }
    if let Some(c) = v.get("components").and_then(Json::as_str) {
        parts.push(c.to_string());
    }
    parts.join(" ")
}

/// What a verdict points at: the ops to outline strongly (a linearizability witness's
/// illegal window, else every op the witness or anomalies name), the ops to outline lightly
/// (the linearized prefix), the failing key, and the ops whose span is the failing window
/// (the illegal window and the last linearized op before it).
struct Witness {
    strong: BTreeSet<u64>,
    light: BTreeSet<u64>,
    key: Option<Json>,
    window: BTreeSet<u64>,
}

fn walk_indices(v: &Json, out: &mut BTreeSet<u64>) {
    match v {
        Json::Object(m) => {
            if m.contains_key("process") {
                for k in ["index", "completion-index"] {
                    if let Some(i) = m.get(k).and_then(Json::as_u64) {
                        out.insert(i);
                    }
                }
            }
            m.values().for_each(|x| walk_indices(x, out));
        }
        Json::Array(a) => a.iter().for_each(|x| walk_indices(x, out)),
        _ => {}
    }
}

fn witness_ops(verdict: &Json) -> Witness {
    let mut w = Witness { strong: BTreeSet::new(), light: BTreeSet::new(), key: None, window: BTreeSet::new() };
    if let Some(lin) = verdict.get("witness") {
        w.key = lin.get("key").filter(|k| !k.is_null()).cloned();
        if let Some(iw) = lin.get("illegal-window") {
            walk_indices(iw, &mut w.strong);
            w.window = w.strong.clone();
            walk_indices(lin, &mut w.light);
            if let Some(last) = lin.get("linearized-prefix").and_then(Json::as_array).and_then(|p| p.last()) {
                walk_indices(last, &mut w.window);
            }
        } else {
            walk_indices(lin, &mut w.strong);
        }
    }
    for field in ["anomalies", "errors", "lost", "unexpected", "duplicated", "failed-but-present"] {
        if let Some(a) = verdict.get(field) {
            walk_indices(a, &mut w.strong);
        }
    }
    w
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn short(v: &Json, max: usize) -> String {
    let s = v.to_string();
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Horizontal geometry shared by the plots.
struct Frame {
    left: f64,
    width: f64,
    t_end: f64,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        self.left + (t / self.t_end).clamp(0.0, 1.0) * self.width
    }

    /// A horizontal grid line at `y` with its label on the left axis.
    fn grid_line(&self, y: f64, label: &str) -> String {
        format!(
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{label}</text>"##,
            self.left,
            self.left + self.width,
            self.left - 4.0,
            y + 3.0,
        )
    }

    fn bands_svg(&self, bands: &[Band], top: f64, height: f64, labels: bool) -> String {
        let mut s = String::new();
        for b in bands {
            let (x1, x2) = (self.x(b.start), self.x(b.end));
            let _ = write!(
                s,
                r##"<rect x="{x1:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="{}" opacity="0.45"><title>{} {}: {:.1}s–{:.1}s</title></rect>"##,
                (x2 - x1).max(1.0),
                band_color(&b.kind),
                esc(&b.kind),
                esc(&b.label),
                b.start,
                b.end
            );
            if labels {
                let _ = write!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#555">{}</text>"##,
                    x1 + 2.0,
                    top + 9.0,
                    esc(&b.kind)
                );
            }
        }
        s
    }

    fn time_axis(&self, y: f64) -> String {
        let mut s =
            format!(r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#333"/>"##, self.left, self.left + self.width);
        let step = nice_step(self.t_end / 10.0);
        let mut t = 0.0;
        while t <= self.t_end + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
                y + 4.0,
                y + 15.0,
                fmt_num(t)
            );
            t += step;
        }
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">time (s)</text>"##,
            self.left + self.width,
            y + 28.0
        );
        s
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

fn legend(x: f64, y: f64) -> String {
    let mut s = String::new();
    for (i, (name, c)) in [("ok", OK), ("fail", FAIL), ("info", INFO)].iter().enumerate() {
        let lx = x + i as f64 * 60.0;
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}" font-size="11">{name}</text>"##,
            y - 9.0,
            lx + 14.0,
            y
        );
    }
    s
}

fn latency_svg(spans: &[Span], bands: &[Band], t_end: f64) -> String {
    let (w, h, top, plot_h) = (1000.0, 300.0, 20.0, 240.0);
    let frame = Frame { left: 60.0, width: w - 80.0, t_end };
    let lat: Vec<(f64, f64, OpType)> =
        spans.iter().filter_map(|s| s.end.map(|e| (s.start, ((e - s.start) * 1e3).max(0.01), s.kind))).collect();
    let lo = lat.iter().map(|l| l.1).fold(f64::INFINITY, f64::min).max(0.01);
    let hi = lat.iter().map(|l| l.1).fold(0.0, f64::max).max(lo * 10.0);
    let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil());
    let y = |ms: f64| top + plot_h - (ms.log10() - llo) / (lhi - llo) * plot_h;
    let mut s = format!(r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="plot">"##);
    s += &frame.bands_svg(bands, top, plot_h, true);
    let mut e = llo;
    while e <= lhi {
        let ms = 10f64.powf(e);
        let yy = y(ms);
        s += &frame.grid_line(yy, &if ms < 1.0 { format!("{ms}") } else { fmt_num(ms) });
        e += 1.0;
    }
    let _ = write!(
        s,
        r##"<text x="14" y="{}" font-size="10" transform="rotate(-90 14 {})" text-anchor="middle">latency (ms)</text>"##,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    // Draw ok first so failures and unknowns stay visible on top.
    for kind in [OpType::Ok, OpType::Fail, OpType::Info] {
        for &(t, ms, _) in lat.iter().filter(|l| l.2 == kind) {
            let _ = write!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}"/>"##, frame.x(t), y(ms), color(kind));
        }
    }
    s += &frame.time_axis(top + plot_h);
    s += &legend(frame.left + frame.width - 180.0, 12.0);
    s += "</svg>";
    s
}

fn rate_svg(spans: &[Span], bands: &[Band], t_end: f64) -> String {
    let (w, h, top, plot_h) = (1000.0, 260.0, 20.0, 200.0);
    let frame = Frame { left: 60.0, width: w - 80.0, t_end };
    let bin = (t_end / 120.0).max(0.5);
    let nbins = (t_end / bin).ceil().max(1.0) as usize;
    let mut counts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in spans {
        let Some(end) = s.end else { continue };
        let name = match s.kind {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            _ => "info",
        };
        let b = ((end / bin) as usize).min(nbins - 1);
        counts.entry(name).or_insert_with(|| vec![0.0; nbins])[b] += 1.0 / bin;
    }
    let max = counts.values().flatten().fold(1.0f64, |a, &b| a.max(b)) * 1.1;
    let y = |r: f64| top + plot_h - r / max * plot_h;
    let mut s = format!(r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="plot">"##);
    s += &frame.bands_svg(bands, top, plot_h, true);
    let step = nice_step(max / 5.0);
    let mut r = 0.0;
    while r <= max {
        let yy = y(r);
        s += &frame.grid_line(yy, &fmt_num(r));
        r += step;
    }
    let _ = write!(
        s,
        r##"<text x="14" y="{}" font-size="10" transform="rotate(-90 14 {})" text-anchor="middle">ops/s</text>"##,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (name, c) in [("ok", OK), ("fail", FAIL), ("info", INFO)] {
        let Some(v) = counts.get(name) else { continue };
        let pts: Vec<String> =
            v.iter().enumerate().map(|(i, r)| format!("{:.1},{:.1}", frame.x((i as f64 + 0.5) * bin), y(*r))).collect();
        let _ = write!(s, r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="1.5"/>"##, pts.join(" "));
    }
    s += &frame.time_axis(top + plot_h);
    s += &legend(frame.left + frame.width - 180.0, 12.0);
    s += "</svg>";
    s
}

/// Most bars drawn in the timeline; beyond it only highlighted ops are drawn.
const MAX_TIMELINE_BARS: usize = 40_000;

fn timeline_svg(spans: &[Span], bands: &[Band], t_end: f64, lanes: usize, marked: &Marks) -> String {
    let lanes = lanes.max(1);
    let lane_h = 14.0;
    let top = 10.0;
    let width = (t_end * 40.0).clamp(1000.0, 20_000.0);
    let frame = Frame { left: 50.0, width, t_end };
    let plot_h = lanes as f64 * lane_h;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" class="timeline">"##,
        width + 70.0,
        plot_h + top + 40.0
    );
    s += &frame.bands_svg(bands, top, plot_h, false);
    if let Some((a, b)) = marked.window {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="{ALERT}" opacity="0.12"><title>the checker's failing window</title></rect>"##,
            frame.x(a),
            (frame.x(b) - frame.x(a)).max(2.0)
        );
    }
    for l in 0..lanes {
        let y = top + l as f64 * lane_h;
        let _ = write!(s, r##"<text x="4" y="{:.1}" font-size="10">w{l}</text>"##, y + 10.0);
    }
    let crowded = spans.len() > MAX_TIMELINE_BARS;
    for sp in spans {
        let strong =
            marked.ops.contains(&sp.invoke_index) || sp.completion_index.is_some_and(|c| marked.ops.contains(&c));
        let on_key =
            (marked.key.is_some() && sp.key.map(Json::from) == marked.key) || marked.light.contains(&sp.invoke_index);
        if crowded && !strong {
            continue;
        }
        let lane = (sp.process % lanes as u64) as f64;
        let y = top + lane * lane_h + 1.0;
        let x1 = frame.x(sp.start);
        let x2 = frame.x(sp.end.unwrap_or(t_end));
        let stroke = if strong {
            format!(r##" stroke="{ALERT}" stroke-width="2""##)
        } else if on_key {
            format!(r##" stroke="{ALERT}" stroke-width="0.8""##)
        } else if sp.end.is_none() {
            r##" stroke="#666" stroke-dasharray="2,2""##.to_string()
        } else {
            String::new()
        };
        let latency =
            sp.end.map(|e| format!("{:.1} ms", (e - sp.start) * 1e3)).unwrap_or_else(|| "never completed".into());
        let key = sp.key.map(|k| format!(" key {k}")).unwrap_or_default();
        let err = sp.error.as_deref().map(|e| format!(" ({})", esc(e))).unwrap_or_default();
        let _ = write!(
            s,
            r##"<rect x="{x1:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"{stroke}><title>#{} p{} {}{key} {} → {} {}{err}, {latency}</title></rect>"##,
            (x2 - x1).max(1.0),
            lane_h - 2.0,
            color(sp.kind),
            sp.invoke_index,
            sp.process,
            esc(&sp.f),
            esc(&short(&sp.value, 120)),
            if sp.end.is_some() { sp.kind.name() } else { "pending" },
            esc(&short(&sp.result, 200)),
        );
    }
    s += &frame.time_axis(top + plot_h);
    s += "</svg>";
    s
}

/// What to outline in the timeline.
struct Marks {
    ops: BTreeSet<u64>,
    light: BTreeSet<u64>,
    key: Option<Json>,
    window: Option<(f64, f64)>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn counts_table(spans: &[Span]) -> String {
    let mut per_f: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in spans {
        let c = per_f.entry(&s.f).or_default();
        c[match s.kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            OpType::Info => 2,
            OpType::Invoke => 3,
        }] += 1;
        if let (Some(e), OpType::Ok) = (s.end, s.kind) {
            lat.entry(&s.f).or_default().push((e - s.start) * 1e3);
        }
    }
    let mut t = String::from(
        "<table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th><th>pending</th><th>ok latency p50 / p95 / p99 / max (ms)</th></tr>",
    );
    for (f, c) in &per_f {
        let mut l = lat.remove(f).unwrap_or_default();
        l.sort_by(f64::total_cmp);
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} / {:.1} / {:.1} / {:.1}</td></tr>",
            esc(f),
            c[0],
            c[1],
            c[2],
            c[3],
            quantile(&l, 0.5),
            quantile(&l, 0.95),
            quantile(&l, 0.99),
            l.last().copied().unwrap_or(0.0)
        );
    }
    t + "</table>"
}

/// Renders the report.
pub fn render(meta: &ReportMeta, events: &[Event], verdict: &Json) -> String {
    let spans = spans(events);
    let t_end = events.iter().map(|e| secs(e.time)).fold(1.0, f64::max);
    let bands = bands(events, t_end);
    let Witness { strong, light, key, window: window_ops } = witness_ops(verdict);
    let window = {
        let times: Vec<(f64, f64)> = spans
            .iter()
            .filter(|s| window_ops.contains(&s.invoke_index))
            .map(|s| (s.start, s.end.unwrap_or(t_end)))
            .collect();
        let a = times.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
        let b = times.iter().map(|t| t.1).fold(0.0, f64::max);
        (a.is_finite()).then_some((a, b))
    };
    let marks = Marks { ops: strong, light, key, window };
    let valid = verdict.get("valid?").cloned().unwrap_or(Json::Null);
    let (badge, badge_color) = match &valid {
        Json::Bool(true) => ("VALID", "#2e7d32"),
        Json::Bool(false) => ("INVALID", ALERT),
        _ => ("UNKNOWN", "#b26a00"),
    };
    let mut h = String::new();
    let _ = write!(
        h,
        r##"<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: sans-serif; margin: 20px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: left; }}
.badge {{ display: inline-block; padding: 4px 12px; color: white; font-weight: bold; border-radius: 4px; }}
.scroll {{ overflow-x: auto; border: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 8px; overflow: auto; max-height: 500px; font-size: 12px; }}
.note {{ color: {ALERT}; }}
</style></head><body><h1>{title}</h1><p><span class="badge" style="background:{badge_color}">{badge}</span></p>"##,
        title = esc(&meta.title)
    );
    h += "<table>";
    for (k, v) in &meta.facts {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h += "</table>";
    for n in &meta.notes {
        let _ = write!(h, r##"<p class="note">{}</p>"##, esc(n));
    }
    if valid == Json::Bool(false) {
        h += "<h2>Why it is invalid</h2>";
        if let Some(k) = &marks.key {
            let _ = write!(
                h,
                "<p>Failing key: <b>{}</b> (its ops are outlined in red in the timeline",
                esc(&k.to_string())
            );
            if let Some((a, b)) = marks.window {
                let _ = write!(h, "; the failing window, {a:.3}s–{b:.3}s, is shaded red");
            }
            h += ").</p>";
        }
        if !marks.ops.is_empty() {
            let _ = write!(
                h,
                "<p>Operations the checker blames (thick red outline in the timeline): {}</p>",
                marks.ops.iter().take(200).map(|i| format!("#{i}")).collect::<Vec<_>>().join(" ")
            );
        }
        let mut witness = serde_json::Map::new();
        for f in ["witness", "anomaly-types", "anomalies", "not", "errors", "lost", "unexpected", "duplicated"] {
            if let Some(v) = verdict.get(f) {
                witness.insert(f.into(), v.clone());
            }
        }
        let text = serde_json::to_string_pretty(&Json::Object(witness)).unwrap_or_default();
        let _ = write!(h, "<pre>{}</pre>", esc(&text[..text.len().min(200_000)]));
    }
    h += "<h2>Operations</h2>";
    h += &counts_table(&spans);
    h += "<h2>Latency</h2><p>Every completed operation at its invocation time; shaded bands are faults.</p>";
    h += &latency_svg(&spans, &bands, t_end);
    h += "<h2>Throughput</h2>";
    h += &rate_svg(&spans, &bands, t_end);
    h += "<h2>Faults</h2><table><tr><th>fault</th><th>from (s)</th><th>to (s)</th><th>what</th></tr>";
    for b in &bands {
        let _ = write!(
            h,
            r##"<tr><td style="background:{}">{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>"##,
            band_color(&b.kind),
            esc(&b.kind),
            b.start,
            b.end,
            esc(&b.label)
        );
    }
    h += "</table>";
    let _ = write!(
        h,
        "<h2>Timeline</h2><p>One lane per worker (process mod {}); hover a bar for the op. Dashed: never completed.</p><div class=\"scroll\">",
        meta.concurrency.max(1)
    );
    h += &timeline_svg(&spans, &bands, t_end, meta.concurrency, &marks);
    h += "</div><h2>Checker result</h2><details><summary>results (JSON)</summary><pre>";
    let full = serde_json::to_string_pretty(verdict).unwrap_or_default();
    h += &esc(&full[..full.len().min(500_000)]);
    h += "</pre></details></body></html>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::recorder::{HistoryLog, Outcome};
    use crate::run::workload::Op;
    use serde_json::json;

    fn history() -> HistoryLog {
        let mut h = HistoryLog::default();
        let w = Op::Write { key: 1, value: 3 };
        let r = Op::Read { key: 1 };
        h.invoke(0, 0, &w);
        h.nemesis(500_000_000, "start-partition", json!({"shape": "bridge", "components": "n1 | n2 n3"}));
        h.complete(1_000_000_000, 0, &w, &Outcome::ok(json!(3)));
        h.invoke(1_100_000_000, 1, &r);
        h.complete(1_200_000_000, 1, &r, &Outcome::ok(json!(4)));
        h.invoke(1_300_000_000, 2, &w);
        h.complete(1_400_000_000, 2, &w, &Outcome::info(json!(3), "timeout".into()));
        h.nemesis(2_000_000_000, "stop-partition", json!(null));
        h
    }

    #[test]
    fn spans_and_bands_come_from_the_history() {
        let h = history();
        let s = spans(&h.events);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].start, s[0].end), (0.0, Some(1.0)));
        assert_eq!(s[2].kind, OpType::Info);
        let b = bands(&h.events, 3.0);
        assert_eq!(b, vec![Band { kind: "partition".into(), start: 0.5, end: 2.0, label: "bridge n1 | n2 n3".into() }]);
    }

    #[test]
    fn clock_member_and_leader_faults_are_shown() {
        let mut h = HistoryLog::default();
        h.nemesis(1_000_000_000, "start-clock", json!({"mode": "bump", "node": "n2", "offset-ms": -250}));
        h.nemesis(1_500_000_000, "transfer-leader", json!({"group": 1, "from": "n1", "to": "n3", "error": "x"}));
        h.nemesis(2_000_000_000, "stop-clock", json!({"reset": ["n1", "n2", "n3"]}));
        h.nemesis(2_500_000_000, "start-member", json!({"node": "n4", "removed-from": [1]}));
        h.nemesis(3_000_000_000, "stop-member", json!({"node": "n4", "error": "no answer"}));
        let b = bands(&h.events, 4.0);
        let got: Vec<(&str, f64, f64, &str)> =
            b.iter().map(|b| (b.kind.as_str(), b.start, b.end, b.label.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("clock", 1.0, 2.0, "bump n2 -250 ms"),
                ("transfer-leader", 1.5, 1.5, "group 1: n1 → n3 error: x"),
                ("member", 2.5, 4.0, "n4"),
            ]
        );
        assert_ne!(band_color("member"), band_color("other"));
    }

    #[test]
    fn an_invalid_verdict_outlines_its_ops_and_window() {
        let h = history();
        let verdict = json!({
            "valid?": false,
            "witness": {
                "key": 1,
                "linearized-prefix": [{"op": {"index": 0, "completion-index": 2, "process": 0, "f": "write"}}],
                "illegal-window": [{"op": {"index": 3, "process": 1, "f": "read"}, "legal": false}]
            }
        });
        let meta = ReportMeta { title: "t".into(), concurrency: 3, ..Default::default() };
        let html = render(&meta, &h.events, &verdict);
        assert!(html.contains("INVALID"));
        assert!(html.contains("Failing key: <b>1</b>"));
        assert!(html.contains("failing window, 0.000s–1.200s"), "from the last linearized op to the illegal read");
        assert!(html.contains(&format!(r##"stroke="{ALERT}" stroke-width="2"><title>#3 p1 read"##)));
        assert!(html.contains(&format!(r##"stroke="{ALERT}" stroke-width="0.8"><title>#0 p0 write"##)));
        assert_eq!(html.matches(r#"stroke-width="2""#).count(), 1, "only the illegal op is blamed");
        assert_eq!(html.matches("<svg").count(), 3, "latency, rate and timeline");
        let valid = render(&meta, &h.events, &json!({"valid?": true}));
        assert!(valid.contains("VALID") && !valid.contains("Why it is invalid"));
        assert!(!valid.contains(r##"stroke-width="2""##));
    }

    #[test]
    fn steps_and_escaping() {
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(esc("<a&\"b>"), "&lt;a&amp;&quot;b&gt;");
        assert_eq!(short(&json!("abcdef"), 4), "\"abc…");
    }
}
