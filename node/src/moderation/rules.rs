//! The word and pattern rules: one rule per line of a file; `#` starts a
//! comment line; a line `/.../` is a regular expression, any other line a
//! word or phrase matched case-insensitively anywhere in the content.
//! Matches are masked with `*` (one per character) or refuse the message,
//! as `SB_MODERATION_WORDS_ACTION` says.
//!
//! The file is read at start (a bad file stops the node) and again when its
//! modification time or size changes, checked every few seconds; a bad new
//! version is logged and counted, and the rules in force stay.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use regex::Regex;

use super::Verdict;
use crate::config::WordsAction;
use crate::metrics::Metrics;

/// How often the file is looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Most rules in the file.
pub const MAX_RULES: usize = 10_000;

/// The rules in force, and where they come from.
#[derive(Debug)]
pub struct Rules {
    path: PathBuf,
    action: WordsAction,
    current: RwLock<Loaded>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Loaded {
    /// `None`: the file holds no rule.
    matcher: Option<Regex>,
    /// The file's modification time and size when read.
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Compiles the rules of `text` into one case-insensitive matcher.
pub fn compile(text: &str) -> Result<(Option<Regex>, usize), String> {
    let mut parts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let part = match line.strip_prefix('/').and_then(|l| l.strip_suffix('/')) {
            Some(pattern) if !pattern.is_empty() => {
                let re = Regex::new(pattern)
                    .map_err(|e| format!("line {}: {}", n + 1, one_line(&e.to_string())))?;
                // It would match every message.
                if re.is_match("") {
                    return Err(format!(
                        "line {}: /{pattern}/ matches the empty text",
                        n + 1
                    ));
                }
                format!("(?:{pattern})")
            }
            _ => regex::escape(line),
        };
        parts.push(part);
    }
    if parts.len() > MAX_RULES {
        return Err(format!("{} rules; at most {MAX_RULES}", parts.len()));
    }
    if parts.is_empty() {
        return Ok((None, 0));
    }
    let count = parts.len();
    let re = Regex::new(&format!("(?i){}", parts.join("|"))).map_err(|e| e.to_string())?;
    Ok((Some(re), count))
}

/// A regex error on one line (they span several), for logs and statuses.
fn one_line(e: &str) -> String {
    e.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Rules {
    /// Reads the rules of `path`.
    pub fn load(path: PathBuf, action: WordsAction, metrics: Arc<Metrics>) -> Result<Self, String> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("SB_MODERATION_WORDS_FILE {}: {e}", path.display()))?;
        let (matcher, count) = compile(&text)
            .map_err(|e| format!("SB_MODERATION_WORDS_FILE {}: {e}", path.display()))?;
        metrics.moderation_rules.set(count as i64);
        Ok(Self {
            current: RwLock::new(Loaded {
                matcher,
                stamp: stamp(&path),
            }),
            path,
            action,
            metrics,
        })
    }

    /// The verdict of the rules in force.
    pub fn judge(&self, content: &str) -> Verdict {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(re) = &current.matcher else {
            return Verdict::Allow;
        };
        if !re.is_match(content) {
            return Verdict::Allow;
        }
        match self.action {
            WordsAction::Reject => {
                Verdict::Reject("the message holds a word this service does not allow".into())
            }
            WordsAction::Mask => Verdict::Rewrite(
                re.replace_all(content, |c: &regex::Captures<'_>| {
                    "*".repeat(c[0].chars().count())
                })
                .into_owned(),
            ),
        }
    }

    /// Reads the file again if it changed; true when new rules are in force.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        {
            let current = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if now == current.stamp {
                return false;
            }
        }
        let compiled = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| compile(&text));
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.stamp = now;
        match compiled {
            Ok((matcher, count)) => {
                current.matcher = matcher;
                self.metrics.moderation_rules.set(count as i64);
                tracing::info!(path = %self.path.display(), rules = count, "moderation rules read again");
                true
            }
            Err(e) => {
                self.metrics.moderation_reload_failures.inc();
                tracing::error!(path = %self.path.display(), error = %e, "moderation rules not read again; the previous ones stay");
                false
            }
        }
    }

    /// Reads the file again on change until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let rules = self.clone();
            // File reads off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || rules.reload_if_changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str, action: WordsAction) -> (Rules, tempfile_path::Path) {
        let file = tempfile_path::Path::new(text);
        let r = Rules::load(file.0.clone(), action, Arc::new(Metrics::new())).unwrap();
        (r, file)
    }

    /// A file of its own in the temp dir, removed when dropped.
    mod tempfile_path {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "sb-words-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn words_are_masked_case_insensitively_and_patterns_apply() {
        let (r, _f) = rules("# comment\ndarn\n\n/b[a4]d+/\nfoo bar\n", WordsAction::Mask);
        assert_eq!(r.judge("all good"), Verdict::Allow);
        assert_eq!(
            r.judge("Darn it, b4ddd FOO BAR"),
            Verdict::Rewrite("**** it, ***** *******".into())
        );
        assert_eq!(r.judge("日本 darn"), Verdict::Rewrite("日本 ****".into()));
        let (r, _f) = rules("darn\n", WordsAction::Reject);
        assert!(matches!(r.judge("oh DARN"), Verdict::Reject(_)));
        assert!(compile("/(unclosed/").is_err());
        let empty = compile("ok\n/x*/\n").unwrap_err();
        assert!(
            empty.contains("line 2") && empty.contains("empty"),
            "{empty}"
        );
        assert!(!compile("/(a/").unwrap_err().contains('\n'));
        assert_eq!(compile("# nothing\n\n").unwrap().1, 0);
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_rules() {
        let (r, f) = rules("darn\n", WordsAction::Reject);
        assert!(!r.reload_if_changed(), "unchanged");
        std::fs::write(&f.0, "darn\nheck\n").unwrap();
        assert!(r.reload_if_changed());
        assert!(matches!(r.judge("heck"), Verdict::Reject(_)));
        std::fs::write(&f.0, "heck\n/(broken/\n").unwrap();
        assert!(!r.reload_if_changed());
        assert!(
            matches!(r.judge("heck"), Verdict::Reject(_)),
            "the old rules stay"
        );
        assert_eq!(r.metrics.moderation_reload_failures.get(), 1);
    }
}
