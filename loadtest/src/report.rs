//! What a run reports: the summary table, `--json`, and `--report`'s HTML
//! page with SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::control::ServerUsage;
use crate::ledger::Verdict;
use crate::stats::{max_ms, ms, Latencies, Second};

/// Every figure of a run. The first fields are the stable top level that
/// scripts read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `direct`, `group`, `idle`, `reconnect` or `http`.
    pub scenario: String,
    /// Sends acknowledged (the whole run, warm-up included).
    pub acked: u64,
    /// Deliveries of acknowledged or unacknowledged messages of this run.
    pub delivered: u64,
    /// Deliveries the acknowledged messages called for and never got.
    pub lost: u64,
    /// Deliveries of a message the device had already received.
    pub duplicated: u64,
    /// Deliveries after a later message of the same conversation.
    pub reordered: u64,
    /// Send→deliver p50 over the measured window, ms.
    pub p50_ms: f64,
    /// Send→deliver p99, ms.
    pub p99_ms: f64,
    /// Send→deliver p99.9, ms.
    pub p999_ms: f64,
    /// Send→deliver maximum, ms.
    pub max_ms: f64,
    /// Send→ack p50, ms.
    pub ack_p50_ms: f64,
    /// Send→ack p99, ms.
    pub ack_p99_ms: f64,
    /// Send→ack p99.9, ms.
    pub ack_p999_ms: f64,
    /// Send→ack maximum, ms.
    pub ack_max_ms: f64,
    /// Sends that went out.
    pub sent: u64,
    /// Deliveries the acknowledged messages called for.
    pub expected: u64,
    /// Acknowledged sends per second over the measured window.
    pub acked_per_s: f64,
    /// Deliveries per second over the measured window.
    pub delivered_per_s: f64,
    /// Refusals and failures by kind.
    pub errors: Errors,
    /// Sends due while the in-flight cap was reached.
    pub held_by_in_flight_cap: u64,
    /// Connections that ended without the tool closing them.
    pub disconnects: u64,
    /// What was asked for.
    pub config: RunConfig,
    /// The server's usage around the measured window.
    pub server: Option<ServerFigures>,
    /// The tool's own CPU over the run, seconds (it shares the machine).
    pub loadtest_cpu_seconds: f64,
    /// Scenario-specific figures (connect times, reconnect storm, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// `--find-max`: every step and the highest rate that held.
    pub find_max: Option<FindMax>,
    /// One entry per second.
    pub timeseries: Vec<Second>,
    /// Send→deliver percentiles for the distribution plot: (percentile, ms).
    #[serde(skip)]
    pub distribution: Vec<(f64, f64)>,
}

/// Refusals and failures by kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    /// `RATE_LIMITED`.
    pub rate_limited: u64,
    /// `SERVER_BUSY` / HTTP 503.
    pub busy: u64,
    /// No answer in time.
    pub timeouts: u64,
    /// Anything else.
    pub other: u64,
}

/// The options a run ran with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunConfig {
    /// Socket transport, or `http`.
    pub transport: String,
    /// `binary` or `json`.
    pub encoding: String,
    /// Connections opened.
    pub connections: usize,
    /// Offered messages per second.
    pub rate: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Body bytes.
    pub body_size: usize,
    /// In-flight cap.
    pub in_flight: usize,
    /// Seed.
    pub seed: u64,
    /// Nodes the connections were spread over.
    pub endpoints: usize,
    /// The tool's runtime worker threads (`--workers`).
    pub tool_workers: usize,
}

/// The server's usage over the measured window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerFigures {
    /// At the window's start.
    pub before: ServerUsage,
    /// At its end.
    pub after: ServerUsage,
    /// CPU seconds used in the window.
    pub cpu_seconds: f64,
    /// Cores used on average.
    pub cores: f64,
    /// Server CPU per acknowledged message, µs.
    pub cpu_us_per_message: f64,
}

/// The capacity search.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FindMax {
    /// The p99 bound, ms.
    pub p99_bound_ms: f64,
    /// Each rate tried.
    pub steps: Vec<Step>,
    /// The highest offered rate that held (0 if none did).
    pub max_rate: f64,
    /// Deliveries per second at that rate.
    pub max_delivered_per_s: f64,
}

/// One rate of the capacity search.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Offered messages per second.
    pub rate: f64,
    /// Acknowledged per second.
    pub acked_per_s: f64,
    /// Delivered per second.
    pub delivered_per_s: f64,
    /// Send→deliver p99, ms.
    pub p99_ms: f64,
    /// Send→ack p99, ms.
    pub ack_p99_ms: f64,
    /// Failed sends.
    pub errors: u64,
    /// Whether the step held.
    pub held: bool,
}

impl Report {
    /// Fills the latency fields from the measured window's histograms.
    pub fn set_latencies(&mut self, l: &Latencies) {
        self.p50_ms = ms(&l.deliver, 0.5);
        self.p99_ms = ms(&l.deliver, 0.99);
        self.p999_ms = ms(&l.deliver, 0.999);
        self.max_ms = max_ms(&l.deliver);
        self.ack_p50_ms = ms(&l.ack, 0.5);
        self.ack_p99_ms = ms(&l.ack, 0.99);
        self.ack_p999_ms = ms(&l.ack, 0.999);
        self.ack_max_ms = max_ms(&l.ack);
        self.distribution = distribution(&l.deliver);
    }

    /// Takes the correctness verdict.
    pub fn set_verdict(&mut self, v: Verdict) {
        self.expected = v.expected;
        self.lost = v.lost;
        self.duplicated = v.duplicated;
        self.reordered = v.reordered;
    }

    /// Whether the run must exit non-zero.
    pub fn failed(&self) -> bool {
        self.lost + self.duplicated + self.reordered > 0
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.config;
        let attack = self.scenario.starts_with("attack");
        let load = if self.scenario == "idle" || attack {
            format!("held idle for {:.1} s", c.duration_s)
        } else {
            format!(
                "{:.0} msg/s offered for {:.1} s (+{:.1} s warm-up), {}-byte bodies",
                c.rate, c.duration_s, c.warmup_s, c.body_size
            )
        };
        let _ = writeln!(
            t,
            "\n{} over {} ({}), {} connections on {} endpoint(s), {load}",
            self.scenario, c.transport, c.encoding, c.connections, c.endpoints
        );
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<28} {v}");
        };
        if self.scenario == "idle" || attack {
            // No messages: only the connections and the server's memory.
            row(&mut t, "disconnects", self.disconnects.to_string());
            for (k, v) in &self.extra {
                row(&mut t, k, v.to_string());
            }
            row(&mut t, "loadtest CPU", self.loadtest_cpu());
            return t;
        }
        row(
            &mut t,
            "sent / acked",
            format!("{} / {}", self.sent, self.acked),
        );
        row(
            &mut t,
            "acked/s (measured)",
            format!("{:.0}", self.acked_per_s),
        );
        row(
            &mut t,
            "delivered/s (measured)",
            format!("{:.0}", self.delivered_per_s),
        );
        row(
            &mut t,
            "send→deliver ms",
            format!(
                "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
            ),
        );
        row(
            &mut t,
            "send→ack ms",
            format!(
                "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                self.ack_p50_ms, self.ack_p99_ms, self.ack_p999_ms, self.ack_max_ms
            ),
        );
        row(
            &mut t,
            "deliveries expected / got",
            format!("{} / {}", self.expected, self.delivered),
        );
        row(
            &mut t,
            "lost / duplicated / reordered",
            format!("{} / {} / {}", self.lost, self.duplicated, self.reordered),
        );
        let e = &self.errors;
        row(
            &mut t,
            "errors",
            format!(
                "rate_limited {}  busy {}  timeouts {}  other {}  disconnects {}  held by cap {}",
                e.rate_limited,
                e.busy,
                e.timeouts,
                e.other,
                self.disconnects,
                self.held_by_in_flight_cap
            ),
        );
        if let Some(s) = &self.server {
            row(
                &mut t,
                "server",
                format!(
                    "{:.2} cores, {:.1} µs CPU/message, RSS {:.1} → {:.1} MiB",
                    s.cores,
                    s.cpu_us_per_message,
                    s.before.rss_bytes / 1048576.0,
                    s.after.rss_bytes / 1048576.0
                ),
            );
        }
        row(&mut t, "loadtest CPU", self.loadtest_cpu());
        for (k, v) in &self.extra {
            row(&mut t, k, v.to_string());
        }
        if let Some(f) = &self.find_max {
            let _ = writeln!(t, "  capacity search (p99 ≤ {} ms):", f.p99_bound_ms);
            for s in &f.steps {
                let _ = writeln!(
                    t,
                    "    {:>9.0}/s offered: {:>9.0} acked/s {:>10.0} delivered/s  p99 {:>8.2} ms  errors {:>6}  {}",
                    s.rate,
                    s.acked_per_s,
                    s.delivered_per_s,
                    s.p99_ms,
                    s.errors,
                    if s.held { "held" } else { "FAILED" }
                );
            }
            let _ = writeln!(
                t,
                "  highest rate that held: {:.0} msg/s ({:.0} deliveries/s)",
                f.max_rate, f.max_delivered_per_s
            );
        }
        let _ = writeln!(
            t,
            "  verdict: {}",
            if self.failed() {
                "FAILED: acknowledged messages were lost, duplicated or reordered"
            } else {
                "ok"
            }
        );
        t
    }

    /// The tool's own CPU time, and on how many workers.
    fn loadtest_cpu(&self) -> String {
        format!(
            "{:.2} s on {} worker(s)",
            self.loadtest_cpu_seconds, self.config.tool_workers
        )
    }

    /// Writes `--json`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `--report DIR`: `index.html` and three SVG plots.
    pub fn write_html(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        plot_throughput(&dir.join("throughput.svg"), &self.timeseries)?;
        plot_latency(&dir.join("latency.svg"), &self.timeseries)?;
        plot_distribution(&dir.join("distribution.svg"), &self.distribution)?;
        plot_server(&dir.join("server.svg"), &self.timeseries)?;
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        let table = html_escape(&self.table());
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>hanmadi-loadtest: {scenario}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1a1a1a}}\
pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}img{{max-width:100%}}</style></head><body>\
<h1>hanmadi-loadtest: {scenario}</h1><pre>{table}</pre>\
<h2>Throughput</h2><img src=\"throughput.svg\" alt=\"messages per second over time\">\
<h2>Latency over time</h2><img src=\"latency.svg\" alt=\"send to deliver p50 and p99 per second\">\
<h2>Latency distribution</h2><img src=\"distribution.svg\" alt=\"send to deliver latency by percentile\">\
<h2>Server memory</h2><img src=\"server.svg\" alt=\"server resident memory per second\">\
<h2>Every figure</h2><details><summary>JSON</summary><pre>{json}</pre></details></body></html>\n",
            scenario = self.scenario,
            json = html_escape(&json),
        );
        let path = dir.join("index.html");
        std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))
    }
}

/// (percentile, ms) points from p0 to p99.99 for the distribution plot.
fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Evenly spaced in "nines", so the tail gets as much room as the body.
    (0..=80)
        .map(|i| {
            let nines = f64::from(i) / 20.0; // 0 .. 4 nines
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, ms(h, q.min(0.9999)))
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

/// One line of a time plot: its legend, colour and value per second
/// (`None`: no point that second, e.g. a latency when nothing arrived).
struct Line {
    name: &'static str,
    color: RGBColor,
    value: fn(&Second) -> Option<f64>,
}

/// A latency is only a point when something was measured that second.
fn measured(ms: f64) -> Option<f64> {
    (ms > 0.0).then_some(ms)
}

fn plot_throughput(path: &Path, series: &[Second]) -> anyhow::Result<()> {
    let lines = [
        Line {
            name: "sent",
            color: BLUE,
            value: |s| Some(s.sent as f64),
        },
        Line {
            name: "acked",
            color: GREEN,
            value: |s| Some(s.acked as f64),
        },
        Line {
            name: "delivered",
            color: RED,
            value: |s| Some(s.delivered as f64),
        },
    ];
    plot_over_time(path, "messages per second", "per second", series, &lines)
}

fn plot_latency(path: &Path, series: &[Second]) -> anyhow::Result<()> {
    let lines = [
        Line {
            name: "send→deliver p50",
            color: BLUE,
            value: |s| measured(s.deliver_p50_ms),
        },
        Line {
            name: "send→deliver p99",
            color: RED,
            value: |s| measured(s.deliver_p99_ms),
        },
        Line {
            name: "send→ack p99",
            color: GREEN,
            value: |s| measured(s.ack_p99_ms),
        },
    ];
    plot_over_time(path, "latency per second (ms)", "ms", series, &lines)
}

fn plot_server(path: &Path, series: &[Second]) -> anyhow::Result<()> {
    let lines = [Line {
        name: "server RSS (MiB)",
        color: BLUE,
        value: |s| measured(s.server_rss_mib),
    }];
    plot_over_time(path, "server resident memory (MiB)", "MiB", series, &lines)
}

fn plot_over_time(
    path: &Path,
    caption: &str,
    y_desc: &str,
    series: &[Second],
    lines: &[Line],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let t_max = series.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| lines.iter().filter_map(move |l| (l.value)(s)))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()
        .map_err(plot_err)?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                series.iter().filter_map(|s| Some((s.t, (line.value)(s)?))),
                color,
            ))
            .map_err(plot_err)?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn plot_distribution(path: &Path, points: &[(f64, f64)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    // x in "nines" (0 = p0, 2 = p99, 4 = p99.99), labelled as percentiles.
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-4).log10();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("send→deliver by percentile (ms)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.0, 0.0..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x: &f64| format!("p{}", 100.0 - 100.0 * 10f64.powf(-*x)))
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|(p, v)| (nines(*p), *v)),
            RED,
        ))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}
