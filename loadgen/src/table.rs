//! `table`: one Markdown table and one SVG from the JSON summaries of many
//! runs (what `scripts/compare` collects): throughput runs named
//! `throughput-<target>-<rate>.json`, idle runs `idle-<server>.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Summarise a directory of `--json` run summaries.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// Directory holding the runs' JSON summaries.
    #[arg(long)]
    pub dir: PathBuf,

    /// Also draw p50 and p99 latency against offered rate, one line per
    /// target, into this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// One throughput run, as the table shows it.
#[derive(Debug, Clone)]
struct Run {
    target: String,
    offered: f64,
    received: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    cpu_us: Option<f64>,
    lost: u64,
    ok: bool,
}

impl Run {
    fn of(target: &str, v: &Value) -> Option<Self> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let lat = |k: &str| {
            v["latency"]
                .get(k)
                .and_then(Value::as_f64)
                .map(|us| us / 1000.0)
        };
        Some(Self {
            target: target.to_owned(),
            offered: f("offered_rate")?,
            received: f("receive_rate")?,
            p50_ms: lat("p50_us")?,
            p99_ms: lat("p99_us")?,
            p999_ms: lat("p999_us")?,
            cpu_us: f("node_cpu_us_per_msg"),
            lost: v["lost"].as_u64().unwrap_or(0),
            ok: v["ok"].as_bool().unwrap_or(false),
        })
    }
}

pub fn run(args: TableArgs) -> anyhow::Result<bool> {
    let mut runs: Vec<Run> = Vec::new();
    let mut idle: BTreeMap<String, Value> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(v) = read_json(&path) else {
            eprintln!(
                "table: {} holds no summary (the run failed to start?)",
                path.display()
            );
            continue;
        };
        if let Some(rest) = stem.strip_prefix("throughput-") {
            let target = rest.rsplit_once('-').map_or(rest, |(t, _)| t);
            match Run::of(target, &v) {
                Some(r) => runs.push(r),
                None => eprintln!("table: {} lacks figures", path.display()),
            }
        } else if let Some(server) = stem.strip_prefix("idle-") {
            idle.insert(server.to_owned(), v);
        }
    }
    runs.sort_by(|a, b| {
        a.target
            .cmp(&b.target)
            .then(a.offered.total_cmp(&b.offered))
    });
    print!("{}", markdown(&runs, &idle));
    if let Some(svg) = &args.svg {
        std::fs::write(svg, plot(&runs)).with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(!runs.is_empty())
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn markdown(runs: &[Run], idle: &BTreeMap<String, Value>) -> String {
    let mut s = String::from(
        "| target | offered msg/s | received msg/s | p50 | p99 | p99.9 | server CPU per message | lost | all checks |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.offered,
            r.received,
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.p999_ms),
            r.cpu_us.map_or("?".into(), |c| format!("{c:.0} µs")),
            r.lost,
            if r.ok { "passed" } else { "FAILED" }
        );
    }
    if !idle.is_empty() {
        s.push_str(
            "\n| server | idle connections | connected in | per second | RSS per idle connection |\n|---|---|---|---|---|\n",
        );
        for (server, v) in idle {
            let _ = writeln!(
                s,
                "| {server} | {} | {} s | {} | {} KiB |",
                v["connections_open"],
                v["connect_secs"],
                v["connects_per_sec"],
                v["node_rss_per_connection_kib"]
            );
        }
    }
    s
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// p50 (dashed) and p99 (solid) latency against offered rate, log-scaled
/// latency, one colour per target.
fn plot(runs: &[Run]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 200.0;
    const T: f64 = 30.0;
    const B: f64 = 50.0;
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let max_rate = runs.iter().map(|r| r.offered).fold(1.0, f64::max);
    let (lo, hi) = (0.1_f64, 10_000.0_f64);
    let x = |rate: f64| L + (W - L - R) * rate / max_rate;
    let y = |v: f64| {
        let v = v.clamp(lo, hi);
        T + (H - T - B) * (1.0 - (v.log10() - lo.log10()) / (hi.log10() - lo.log10()))
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{L}" y="18">latency from scheduled send (ms, log scale, clamped to 0.1-10,000) against offered rate (msg/s); solid p99, dashed p50</text>
"#
    );
    for decade in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{L}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{decade}</text>"##,
            W - R,
            L - 6.0,
            y(decade) + 4.0,
            y0 = y(decade)
        );
    }
    let rates: Vec<f64> = {
        let mut r: Vec<f64> = runs.iter().map(|r| r.offered).collect();
        r.sort_by(f64::total_cmp);
        r.dedup();
        r
    };
    for rate in &rates {
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{T}" y2="{}" stroke="#eee"/><text x="{x0:.1}" y="{}" text-anchor="middle">{rate}</text>"##,
            H - B,
            H - B + 18.0,
            x0 = x(*rate)
        );
    }
    let mut targets: Vec<&str> = runs.iter().map(|r| r.target.as_str()).collect();
    targets.dedup();
    for (i, target) in targets.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = |f: fn(&Run) -> f64| {
            runs.iter()
                .filter(|r| r.target == *target)
                .map(|r| format!("{:.1},{:.1}", x(r.offered), y(f(r))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points(|r| r.p99_ms)
        );
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5,4" points="{}"/>"#,
            points(|r| r.p50_ms)
        );
        let ly = T + 20.0 * i as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{target}</text>"#,
            W - R + 15.0,
            W - R + 40.0,
            W - R + 46.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rate: u64, p99_us: f64, ok: bool) -> Value {
        serde_json::json!({
            "offered_rate": rate, "receive_rate": rate as f64, "lost": 0, "ok": ok,
            "node_cpu_us_per_msg": 30.0,
            "latency": {"p50_us": 300.0, "p99_us": p99_us, "p999_us": 2000.0}
        })
    }

    #[test]
    fn tabulates_and_plots_runs() {
        let runs = vec![
            Run::of("switchboard-1", &summary(1000, 900.0, true)).unwrap(),
            Run::of("centrifugo-1", &summary(1000, 1500.0, false)).unwrap(),
        ];
        let t = markdown(&runs, &BTreeMap::new());
        assert!(
            t.contains(
                "| switchboard-1 | 1000 | 1000 | 0.30 ms | 0.90 ms | 2.00 ms | 30 µs | 0 | passed |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| centrifugo-1 |") && t.contains("FAILED"),
            "{t}"
        );
        let svg = plot(&runs);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">centrifugo-1</text>"));
        assert!(Run::of("x", &serde_json::json!({"ok": true})).is_none());
    }
}
