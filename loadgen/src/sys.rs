//! Process facts from the OS: file descriptor limit, RSS and CPU time from
//! `/proc`, timer slack. The only unsafe code of the crate is here: three
//! plain libc calls on values this module owns.

use std::time::Duration;

use anyhow::{Context, bail};

/// The RLIMIT_NOFILE soft limit before and after raising it.
#[derive(Debug, Clone, Copy)]
pub struct NofileLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit. A child
/// spawned afterwards inherits the raised limit.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> anyhow::Result<NofileLimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into `r`, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit only reads `r`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(NofileLimit {
        before,
        now: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// Asks the kernel to wake this thread's sleeps as close to their deadline
/// as it can (default slack is 50 µs). Best effort.
#[allow(unsafe_code)]
pub fn minimize_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only
    // the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[allow(unsafe_code)]
fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Resident set size (VmRSS) of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status_kib(&status, "VmRSS:")
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS in {path}"))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time consumed so far by `pid` (all its threads).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_stat_cpu_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    let hz = clock_ticks_per_sec();
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some(end) = stat.rfind(')') else {
        bail!("no command name");
    };
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("too few fields")?
            .parse::<u64>()
            .context("not a number")
    };
    Ok(field(14)? + field(15)?)
}

/// CPU time of the whole machine so far: `(busy, total)` over all CPUs,
/// from the first line of `/proc/stat` (busy = total - idle - iowait).
pub fn machine_cpu() -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let (busy, total) = parse_machine_ticks(&stat).context("cannot parse /proc/stat")?;
    let hz = clock_ticks_per_sec();
    let d = |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000) / hz);
    Ok((d(busy), d(total)))
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 300);
        assert!(parse_stat_cpu_ticks("1234 (x) S 1").is_err());
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t   5120 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(5120));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn parses_machine_ticks() {
        let stat = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_ticks(stat), Some((190, 1000)));
        assert_eq!(parse_machine_ticks("cpu 1 2\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        cpu_time(me).unwrap();
        machine_cpu().unwrap();
    }
}
