//! The suite's output: the Markdown table (printed), JSON, the SVG chart of latency against
//! offered load, and docs/performance.md (full runs against Redis only).
use std::{fmt::Write as _, path::Path, time::Duration};

use plotters::prelude::*;
use serde::Serialize;
use sessiond::config::Config;

use crate::{client::Outcome, Settings};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Cpu {
    /// Cores used by the server side of this process (HTTP worker, System thread with the
    /// actors, acceptor, blocking pool).
    pub server: f64,
    /// Cores used by the load generator's thread.
    pub client: f64,
    pub redis: Option<f64>,
    /// Everything else on the machine: PostgreSQL, and other users of this shared machine.
    pub rest: f64,
}

impl Cpu {
    fn cell(&self) -> String {
        let redis = self.redis.map_or("-".into(), |r| format!("{r:.2}"));
        format!(
            "{:.2} / {:.2} / {redis} / {:.2}",
            self.server, self.client, self.rest
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub server: String,
    pub load: String,
    pub rps: f64,
    pub requests: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub cpu_cores: Cpu,
    pub note: String,
}

impl Row {
    pub fn new(
        scenario: &str,
        server: &str,
        load: &str,
        out: &Outcome,
        cpu: Cpu,
        note: String,
    ) -> Self {
        let q = |p| out.latency.value_at_quantile(p);
        Self {
            scenario: scenario.into(),
            server: server.into(),
            load: load.into(),
            rps: out.rps(),
            requests: out.ok + out.errors,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: out.latency.max(),
            errors: out.errors,
            error_samples: out.error_samples.clone(),
            cpu_cores: cpu,
            note,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SweepPoint {
    pub server: String,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub cpu_cores: Cpu,
}

impl SweepPoint {
    pub fn new(server: &str, offered: f64, out: &Outcome, cpu: Cpu) -> Self {
        let q = |p| out.latency.value_at_quantile(p);
        Self {
            server: server.into(),
            offered_rps: offered,
            achieved_rps: out.rps(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: out.latency.max(),
            errors: out.errors,
            cpu_cores: cpu,
        }
    }

    /// Kept up with the schedule: the server was below saturation at this load.
    fn sustained(&self) -> bool {
        self.achieved_rps >= 0.97 * self.offered_rps
    }
}

/// Which server, its legend, which percentile, its colour.
type ChartLine = (&'static str, &'static str, fn(&SweepPoint) -> u64, RGBColor);

#[derive(Debug, Serialize)]
pub struct Argon2Bound {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub cores: usize,
    pub verify_ms: f64,
    pub bound_rps: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub required: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub redis: Option<String>,
}

impl Machine {
    fn probe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_string());
        let meminfo = read("/proc/meminfo");
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or("unknown".into(), |kb| {
                format!("{:.1} GiB", kb / 1024.0 / 1024.0)
            });
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            rustc,
            redis: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub quick: bool,
    pub mode: String,
    pub machine: Machine,
    pub server_settings: String,
    pub rows: Vec<Row>,
    pub sweep: Vec<SweepPoint>,
    pub argon2: Option<Argon2Bound>,
    pub login_rps: Option<f64>,
    /// (SESSION_CACHE_TTL seconds, hit rate, rps) of the distinct-sessions scenario.
    pub hit_rates: Vec<(u64, f64, f64)>,
    pub targets: Vec<Target>,
    pub skipped: Vec<String>,
    pub elapsed_seconds: f64,
    #[serde(skip)]
    pub elapsed: Duration,
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn command(settings: &Settings) -> String {
    let mut parts = Vec::new();
    if settings.quick {
        parts.push("BENCH_QUICK=1".to_string());
    }
    if let Some(url) = &settings.redis_url {
        parts.push(format!("BENCH_REDIS_URL={url}"));
    }
    if let Some(url) = &settings.database_admin_url {
        parts.push(format!(
            "BENCH_DATABASE_URL={}",
            sessiond::config::mask_url_password(url)
        ));
    }
    parts.push("cargo bench --bench load".into());
    parts.join(" ")
}

impl Report {
    pub fn new(settings: &Settings, mode: &str, config: &Config) -> Self {
        Self {
            command: command(settings),
            quick: settings.quick,
            mode: mode.into(),
            machine: Machine::probe(),
            server_settings: format!(
                "HTTP_WORKERS=1, RUST_LOG={} (JSON lines to a file), SESSION_CACHE_TTL=5 unless \
                 stated, ARGON2 m={} KiB t={} p={} (defaults), ARGON2_MAX_CONCURRENCY={}",
                settings.server_log_filter,
                config.argon2.memory_kib,
                config.argon2.iterations,
                config.argon2.parallelism,
                config.argon2.max_concurrency
            ),
            rows: Vec::new(),
            sweep: Vec::new(),
            argon2: None,
            login_rps: None,
            hit_rates: Vec::new(),
            targets: Vec::new(),
            skipped: Vec::new(),
            elapsed_seconds: 0.0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn set_argon2(&mut self, verify: Duration, config: &Config) {
        let cores = self.machine.cores;
        self.argon2 = Some(Argon2Bound {
            memory_kib: config.argon2.memory_kib,
            iterations: config.argon2.iterations,
            parallelism: config.argon2.parallelism,
            cores,
            verify_ms: verify.as_secs_f64() * 1000.0,
            bound_rps: cores as f64 / verify.as_secs_f64(),
        });
        eprintln!(
            "[load]   one argon2id verify: {:.1} ms, bound {:.0} logins/s on {cores} cores",
            verify.as_secs_f64() * 1000.0,
            cores as f64 / verify.as_secs_f64()
        );
    }

    pub fn push(&mut self, row: Row) {
        eprintln!(
            "[load]   {} / {} / {}: {} rps, p50 {}, p99 {}, max {}, errors {}, cpu {} {}",
            row.server,
            row.scenario,
            row.load,
            thousands(row.rps),
            ms(row.p50_us),
            ms(row.p99_us),
            ms(row.max_us),
            row.errors,
            row.cpu_cores.cell(),
            row.error_samples.join("; ")
        );
        self.rows.push(row);
    }

    fn rps(&self, server: &str, scenario: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.server == server && r.scenario == scenario)
            .map(|r| r.rps)
    }

    /// Compares the measurements with the targets docs/performance.md states.
    pub fn finish(&mut self) {
        self.elapsed_seconds = self.elapsed.as_secs_f64();
        let health = self.rps("sessiond", "GET /health");
        let hot = self.rps("sessiond", "GET /session, one hot session");
        let profile = self.rps("sessiond", "GET /profile");
        let base_hot = self.rps("baseline", "GET /session, one hot session");
        let base_health = self.rps("baseline", "GET /health");
        let mut targets = Vec::new();
        let mut ratio = |name: &str, num: Option<f64>, den: Option<f64>, min: f64, what: &str| {
            let (measured, met) = match (num, den) {
                (Some(n), Some(d)) => (
                    format!("{:.2} x ({} / {} rps)", n / d, thousands(n), thousands(d)),
                    Some(n / d >= min),
                ),
                _ => ("not measured".into(), None),
            };
            targets.push(Target {
                name: name.into(),
                measured,
                required: format!(">= {min} x {what}"),
                met,
            });
        };
        ratio("GET /session vs GET /health", hot, health, 0.8, "/health");
        ratio(
            "GET /profile vs GET /health",
            profile,
            health,
            0.6,
            "/health",
        );
        ratio(
            "GET /session vs the actix-session baseline",
            hot,
            base_hot,
            1.75,
            "baseline",
        );
        // The per-request cost of sessiond's instrumentation (request id, metrics, security
        // headers) next to a bare actix-web app's.
        ratio(
            "GET /health vs the actix-session baseline's GET /health",
            health,
            base_health,
            0.9,
            "baseline /health",
        );
        ratio(
            "POST /login vs the argon2 bound",
            self.login_rps,
            self.argon2.as_ref().map(|a| a.bound_rps),
            0.8,
            "cores / one verify",
        );
        if let (Some(bh), Some(b)) = (base_hot, base_health) {
            targets.push(Target {
                name: "(context) baseline /session vs its own /health".into(),
                measured: format!("{:.2} x", bh / b),
                required: "about 0.45 x (one Redis read per request)".into(),
                met: None,
            });
        }

        // p99 at the same offered load, at every rate the baseline sustained.
        let mut compared = Vec::new();
        for b in self.sweep.iter().filter(|p| p.server == "baseline") {
            let Some(s) = self
                .sweep
                .iter()
                .find(|p| p.server == "sessiond" && p.offered_rps == b.offered_rps)
            else {
                continue;
            };
            if b.sustained() && b.errors == 0 {
                compared.push((b.offered_rps, s.p99_us, b.p99_us));
            }
        }
        let (measured, met) = if compared.is_empty() {
            ("not measured".to_string(), None)
        } else {
            let lower = compared.iter().filter(|(_, s, b)| s < b).count();
            let (rate, s, b) = compared.last().expect("not empty");
            (
                format!(
                    "lower at {lower} of {} loads the baseline sustains; at {} rps: {} vs {}",
                    compared.len(),
                    thousands(*rate),
                    ms(*s),
                    ms(*b)
                ),
                Some(lower == compared.len()),
            )
        };
        targets.push(Target {
            name: "GET /session p99 vs baseline at the same offered load".into(),
            measured,
            required: "lower".into(),
            met,
        });

        let mut errors = 0;
        let mut phases = 0;
        for r in &self.rows {
            errors += r.errors;
            phases += 1;
        }
        let mut saturated = Vec::new();
        for p in &self.sweep {
            if p.sustained() {
                errors += p.errors;
                phases += 1;
            } else {
                saturated.push(format!(
                    "{} at {} rps ({} errors)",
                    p.server,
                    thousands(p.offered_rps),
                    p.errors
                ));
            }
        }
        let mut measured = format!("{errors} errors in {phases} phases");
        if !saturated.is_empty() {
            let _ = write!(
                measured,
                "; saturated, not counted: {}",
                saturated.join(", ")
            );
        }
        targets.push(Target {
            name: "zero errors below saturation".into(),
            measured,
            required: "0".into(),
            met: Some(errors == 0),
        });
        self.targets = targets;
    }

    pub fn all_targets_met(&self) -> bool {
        self.targets.iter().all(|t| t.met != Some(false))
    }

    fn markdown(&self, chart: &str, heading: &str) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "{heading} Performance\n");
        let _ = writeln!(
            md,
            "Measured by the load suite in `benches/` with `{}` ({}{}, {:.0} s). Machine: {} cores ({}), {} RAM, Linux {}, {}{}.\n",
            self.command,
            self.mode,
            if self.quick { ", quick mode" } else { "" },
            self.elapsed_seconds,
            m.cores,
            m.cpu,
            m.memory,
            m.kernel,
            m.rustc,
            m.redis.as_ref().map_or(String::new(), |r| format!(", Redis {r}")),
        );
        let _ = writeln!(
            md,
            "Server and load generator share the machine: each server gets 1 HTTP worker thread (plus actix's System thread, where sessiond's actors run); the generator is one thread with a bare HTTP/1.1 keep-alive client; Redis and PostgreSQL are local. sessiond and the baseline run the same way, one after the other. Server: {}. CPU columns are cores used by the server side / the generator / Redis / the rest of the machine (PostgreSQL and anything else running).\n",
            self.server_settings
        );
        let _ = writeln!(
            md,
            "| scenario | server | load | rps | p50 | p90 | p99 | max | errors | CPU srv / cli / redis / rest | notes |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.server,
                r.load,
                thousands(r.rps),
                ms(r.p50_us),
                ms(r.p90_us),
                ms(r.p99_us),
                ms(r.max_us),
                r.errors,
                r.cpu_cores.cell(),
                r.note
            );
        }
        if let Some(a) = &self.argon2 {
            let _ = writeln!(
                md,
                "\nargon2 bound: one argon2id verify (m={} KiB, t={}, p={}) takes {:.1} ms here, so {} cores allow {:.0} logins/s.",
                a.memory_kib, a.iterations, a.parallelism, a.verify_ms, a.cores, a.bound_rps
            );
        }
        if !self.sweep.is_empty() {
            let _ = writeln!(
                md,
                "\n#### Hot path (`GET /session`, one session) at fixed offered load\n\nOpen loop, latency counted from each request's scheduled send time (no coordinated omission).\n"
            );
            let _ = writeln!(
                md,
                "| offered rps | server | achieved rps | p50 | p90 | p99 | max | errors | CPU srv / cli / redis / rest |"
            );
            let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---|");
            for p in &self.sweep {
                let _ = writeln!(
                    md,
                    "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
                    thousands(p.offered_rps),
                    p.server,
                    thousands(p.achieved_rps),
                    if p.sustained() { "" } else { " (saturated)" },
                    ms(p.p50_us),
                    ms(p.p90_us),
                    ms(p.p99_us),
                    ms(p.max_us),
                    p.errors,
                    p.cpu_cores.cell()
                );
            }
            let _ = writeln!(md, "\n![latency against offered load]({chart})");
        }
        let _ = writeln!(md, "\n#### Targets (ratios from this run)\n");
        let _ = writeln!(md, "| target | measured | required | met |");
        let _ = writeln!(md, "|---|---|---|---|");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {met} |",
                t.name, t.measured, t.required
            );
        }
        for s in &self.skipped {
            let _ = writeln!(md, "\nSkipped: {s}.");
        }
        md
    }

    fn chart(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let series = |server: &str, pick: fn(&SweepPoint) -> u64| -> Vec<(f64, f64)> {
            self.sweep
                .iter()
                .filter(|p| p.server == server)
                .map(|p| (p.offered_rps, pick(p) as f64 / 1000.0))
                .collect()
        };
        let x_max = self.sweep.iter().map(|p| p.offered_rps).fold(1.0, f64::max) * 1.05;
        let y_max = self
            .sweep
            .iter()
            .map(|p| p.p99_us as f64 / 1000.0)
            .fold(1.0, f64::max)
            * 2.0;
        let y_min = self
            .sweep
            .iter()
            .map(|p| p.p50_us as f64 / 1000.0)
            .fold(f64::MAX, f64::min)
            .min(y_max)
            / 2.0;
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "GET /session (one session): latency vs offered load",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (y_min.max(0.001)..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered load (requests/s, open loop)")
            .y_desc("latency (ms, log scale)")
            .x_label_formatter(&|v| thousands(*v))
            .y_label_formatter(&|v| format!("{v}"))
            .draw()?;
        let lines: [ChartLine; 4] = [
            (
                "sessiond",
                "sessiond p99",
                |p| p.p99_us,
                RGBColor(20, 70, 170),
            ),
            (
                "sessiond",
                "sessiond p50",
                |p| p.p50_us,
                RGBColor(110, 160, 230),
            ),
            (
                "baseline",
                "actix-session p99",
                |p| p.p99_us,
                RGBColor(200, 40, 30),
            ),
            (
                "baseline",
                "actix-session p50",
                |p| p.p50_us,
                RGBColor(240, 150, 90),
            ),
        ];
        for (server, label, pick, color) in lines {
            let points = series(server, pick);
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Writes everything under target/bench-report and prints the Markdown. A full run against
    /// Redis also refreshes benches/RESULTS.md and benches/results/hot-path.svg, the copy the
    /// performance guide shows, so its numbers are always ones the suite printed.
    pub fn write(&self, settings: &Settings) {
        let dir = &settings.out_dir;
        std::fs::create_dir_all(dir).expect("creating target/bench-report");
        let md = self.markdown("hot-path.svg", "##");
        std::fs::write(dir.join("report.md"), &md).expect("writing report.md");
        let json = serde_json::to_string_pretty(self).expect("report to JSON");
        std::fs::write(dir.join("report.json"), json + "\n").expect("writing report.json");
        let svg = dir.join("hot-path.svg");
        if !self.sweep.is_empty() {
            if let Err(e) = self.chart(&svg) {
                eprintln!("warning: could not draw {}: {e}", svg.display());
            }
        }
        println!("\n{md}");
        println!(
            "Written: {0}/report.md, {0}/report.json, {0}/hot-path.svg, {0}/server.log",
            dir.display()
        );
        let publish = std::env::var("BENCH_PUBLISH").is_ok_and(|v| v == "1");
        if (!settings.quick && settings.redis_url.is_some()) || publish {
            let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
            let results = benches.join("results");
            std::fs::create_dir_all(&results).expect("creating benches/results");
            let _ = std::fs::copy(&svg, results.join("hot-path.svg"));
            std::fs::write(
                results.join("report.json"),
                serde_json::to_string_pretty(self).expect("JSON") + "\n",
            )
            .expect("writing benches/results/report.json");
            let mut section = self.markdown("benches/results/hot-path.svg", "##");
            section.push('\n');
            section.push_str(include_str!("NOTES.md"));
            std::fs::write(benches.join("RESULTS.md"), section)
                .expect("writing benches/RESULTS.md");
            println!(
                "docs/performance.md section: {}",
                benches.join("RESULTS.md").display()
            );
        }
    }
}
