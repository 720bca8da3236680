//! Output: human-readable figures on stdout, or on stderr when `--json`
//! puts the machine-readable summary on stdout.

use std::collections::BTreeMap;

use serde::Serialize;

/// Where the figures go.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn line(&self, s: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", s.as_ref());
        } else {
            println!("{}", s.as_ref());
        }
    }

    pub fn summary<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        }
        Ok(())
    }
}

/// Counts of labelled events (error codes, failure kinds).
pub type Counts = BTreeMap<String, u64>;

pub fn counts_line(c: &Counts) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Rounds to 1 decimal for display and JSON.
pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
