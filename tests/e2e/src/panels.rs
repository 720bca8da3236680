//! Pictures of the dashboard's key panels without Grafana: each panel's
//! queries run over a time range against a real Prometheus, drawn as an SVG
//! line chart (plotters). `docs/operations.md` shows the ones
//! `scripts/render-panels` made; the dashboard test draws them too.

use std::fmt::Write as _;

use plotters::prelude::*;
use serde_json::Value;

use crate::prometheus::{Prometheus, as_sent};

/// The panels `docs/operations.md` shows, by title.
pub const KEY_PANELS: &[&str] = &[
    "Messages stored /s",
    "Delivery latency",
    "Bus publish latency",
    "Redis p99 by command",
];

/// One line of a chart: its legend and (seconds from the start, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The file name of a panel's picture: `panel-<title in kebab case>.svg`.
pub fn file_name(title: &str) -> String {
    let mut name = String::from("panel");
    for word in title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let _ = write!(name, "-{}", word.to_ascii_lowercase());
    }
    name + ".svg"
}

/// The panel titled `title` of `dashboard`: its unit and (query, legend) pairs.
pub fn panel<'a>(dashboard: &'a Value, title: &str) -> Option<(&'a str, Vec<(&'a str, &'a str)>)> {
    let p = dashboard["panels"]
        .as_array()?
        .iter()
        .find(|p| p["title"] == title && p["type"] != "row")?;
    let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
    let targets = p["targets"]
        .as_array()?
        .iter()
        .map(|t| {
            (
                t["expr"].as_str().unwrap_or_default(),
                t["legendFormat"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    Some((unit, targets))
}

/// A legend format (`p99 {{path}}`) filled with a series' labels.
fn legend(format: &str, metric: &Value) -> String {
    let mut out = format.to_owned();
    if let Some(labels) = metric.as_object() {
        for (k, v) in labels {
            out = out.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or_default());
        }
    }
    if out.is_empty() {
        metric.to_string()
    } else {
        out
    }
}

/// The series of a panel over `[start, end]` (Unix seconds), one point per `step` seconds;
/// NaN points left out.
pub async fn panel_series(
    prometheus: &Prometheus,
    targets: &[(&str, &str)],
    start: f64,
    end: f64,
    step: f64,
) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for (expr, format) in targets {
        for s in prometheus
            .query_range(&as_sent(expr), start, end, step)
            .await?
        {
            let points = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let t = p[0].as_f64()?;
                    let v: f64 = p[1].as_str()?.parse().ok()?;
                    v.is_finite().then_some((t - start, v))
                })
                .collect::<Vec<_>>();
            if !points.is_empty() {
                out.push(Series {
                    name: legend(format, &s["metric"]),
                    points,
                });
            }
        }
    }
    Ok(out)
}

/// Line colours, dark enough on white.
const COLORS: &[(u8, u8, u8)] = &[
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (127, 127, 127),
];

/// Values as a panel shows them: milliseconds for seconds, percent for a share.
fn scaled(unit: &str) -> (&'static str, f64) {
    match unit {
        "s" => ("ms", 1000.0),
        "percentunit" => ("%", 100.0),
        "ops" => ("per second", 1.0),
        _ => ("", 1.0),
    }
}

/// An SVG line chart of `series` (x: seconds from the start), each series a
/// 2 px line.
pub fn render(title: &str, unit: &str, series: &[Series]) -> Result<String, String> {
    let (label, factor) = scaled(unit);
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1 * factor))
        .fold(0.0_f64, f64::max)
        .max(f64::EPSILON)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let (r, g, b) = COLORS[i % COLORS.len()];
            let color = RGBColor(r, g, b).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|&(x, y)| (x, y * factor)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_legends_and_lines() {
        assert_eq!(
            file_name("Messages stored /s"),
            "panel-messages-stored-s.svg"
        );
        assert_eq!(
            legend("p99 {{path}}", &json!({"path": "cross_pod"})),
            "p99 cross_pod"
        );
        let s = vec![
            Series {
                name: "p50 local".into(),
                points: vec![(0.0, 0.001), (1.0, 0.002)],
            },
            Series {
                name: "p99 local".into(),
                points: vec![(0.0, 0.004), (1.0, 0.003)],
            },
        ];
        let svg = render("Delivery latency", "s", &s).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // One 2 px line per series (axes and ticks are 1 px).
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 2, "{svg}");
        assert!(svg.contains("p99 local") && svg.contains("\nms\n"), "{svg}");
    }
}
