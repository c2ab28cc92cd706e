//! CPU time and memory of the three processes that share the machine during a run: the
//! server, s2-lite and this load generator, read from `/proc`; and the server's file I/O.

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux/x86).
fn ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields after the `(comm)` of a `/proc/<pid>/stat` line.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// User + system CPU seconds of a process (all its threads, live and exited).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_of(&pid.to_string())
}

/// User + system CPU seconds of this process.
pub fn self_cpu_secs() -> f64 {
    cpu_of("self").unwrap_or(0.0)
}

fn cpu_of(pid: &str) -> Option<f64> {
    let f = stat_fields(pid)?;
    // After the comm: state(0) ppid(1) … utime(11) stime(12).
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / ticks_per_s())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM` = peak RSS), in MB.
pub fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Bytes a process wrote to storage and read through `read` calls so far (`/proc/<pid>/io`
/// `write_bytes`, `rchar`): for the server, sled's log as it reaches the disk, and what sled
/// reads back, page cache included (which is what its CPU pays for; the disk's `read_bytes`
/// would miss it). Not `wchar`: it also counts the `writev` calls that carry appends to S2.
fn io_bytes(pid: u32) -> Option<(u64, u64)> {
    parse_io(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// (`write_bytes`, `rchar`) of a `/proc/<pid>/io` text.
fn parse_io(io: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("write_bytes:")?, field("rchar:")?))
}

/// CPU seconds of the three processes, and the server's I/O bytes, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    server: f64,
    lite: f64,
    generator: f64,
    server_io: (u64, u64),
}

impl CpuSnapshot {
    /// Reads the counters now (a missing process counts as 0).
    pub fn take(server: Option<u32>, lite: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            server: server.and_then(cpu_secs).unwrap_or(0.0),
            lite: lite.and_then(cpu_secs).unwrap_or(0.0),
            generator: self_cpu_secs(),
            server_io: server.and_then(io_bytes).unwrap_or((0, 0)),
        }
    }

    /// CPU used between `earlier` and this snapshot.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuDelta {
        CpuDelta {
            wall_s: self.at.duration_since(earlier.at).as_secs_f64(),
            server_s: (self.server - earlier.server).max(0.0),
            lite_s: (self.lite - earlier.lite).max(0.0),
            generator_s: (self.generator - earlier.generator).max(0.0),
            server_wrote: self.server_io.0.saturating_sub(earlier.server_io.0),
            server_read: self.server_io.1.saturating_sub(earlier.server_io.1),
        }
    }
}

/// CPU seconds each process used over a window of `wall_s` seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuDelta {
    pub wall_s: f64,
    pub server_s: f64,
    pub lite_s: f64,
    pub generator_s: f64,
    /// Bytes the server wrote / read (see [`io_bytes`]).
    pub server_wrote: u64,
    pub server_read: u64,
}

impl CpuDelta {
    /// Microseconds of CPU per message for `secs` of CPU and `n` messages.
    pub fn us_per(secs: f64, n: u64) -> f64 {
        if n == 0 {
            0.0
        } else {
            secs * 1e6 / n as f64
        }
    }

    /// "server 93% / s2-lite 40% / generator 20% of a core" over the window.
    pub fn percents(&self) -> String {
        let pct = |s: f64| 100.0 * s / self.wall_s.max(1e-9);
        format!(
            "server {:.0}% / s2-lite {:.0}% / generator {:.0}% of a core",
            pct(self.server_s),
            pct(self.lite_s),
            pct(self.generator_s)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_figures_are_the_disk_writes_and_the_read_calls() {
        let text = "rchar: 3458\nwchar: 999\nsyscr: 4\nsyscw: 2\nread_bytes: 7\n\
                    write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(text), Some((8192, 3458)));
        assert_eq!(parse_io("rchar: 1\n"), None);
    }

    #[test]
    fn a_snapshot_counts_the_bytes_read_between_two_instants() {
        let me = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), vec![7u8; 1 << 20]).unwrap();
        let before = CpuSnapshot::take(Some(me), None);
        assert_eq!(std::fs::read(dir.path().join("x")).unwrap().len(), 1 << 20);
        let d = CpuSnapshot::take(Some(me), None).since(&before);
        // Other test threads of this process may read too: at least what this one did.
        assert!(d.server_read >= 1 << 20, "read {}", d.server_read);
        assert_eq!(CpuSnapshot::take(None, None).since(&before).server_read, 0);
    }
}
