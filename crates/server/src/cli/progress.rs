//! The progress line of `s2-sink send`: messages and bytes sent and the rate, rewritten in place
//! (`\r`) at most every 200 ms, and only on a terminal, so pipes and log files get no control
//! characters or partial lines.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn at most.
pub const EVERY: Duration = Duration::from_millis(200);

/// A progress line on `W`; quiet (writes nothing) when built without a writer.
pub struct Progress<W: Write> {
    out: Option<W>,
    total: usize,
    start: Instant,
    last_draw: Option<Instant>,
}

impl Progress<std::io::Stderr> {
    /// On stderr when stderr is a terminal, else quiet.
    pub fn stderr(total: usize) -> Self {
        let err = std::io::stderr();
        let out = err.is_terminal().then_some(err);
        Progress::new(out, total)
    }
}

impl<W: Write> Progress<W> {
    /// `total` is the number of messages to send; `out` None is quiet.
    pub fn new(out: Option<W>, total: usize) -> Self {
        Progress {
            out,
            total,
            start: Instant::now(),
            last_draw: None,
        }
    }

    /// Whether anything is drawn at all (a terminal).
    pub fn is_shown(&self) -> bool {
        self.out.is_some()
    }

    /// Redraws with `messages` and `bytes` sent so far, unless the last draw was less than
    /// [`EVERY`] ago.
    pub fn update(&mut self, messages: usize, bytes: u64) {
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < EVERY)
        {
            return;
        }
        self.draw(messages, bytes, now);
    }

    /// Draws the final figures and ends the line (nothing when quiet).
    pub fn finish(&mut self, messages: usize, bytes: u64) {
        self.draw(messages, bytes, Instant::now());
        if let Some(out) = &mut self.out {
            let _ = writeln!(out);
            let _ = out.flush();
        }
    }

    fn draw(&mut self, messages: usize, bytes: u64, now: Instant) {
        let Some(out) = &mut self.out else {
            return;
        };
        self.last_draw = Some(now);
        let line = line(messages, self.total, bytes, now.duration_since(self.start));
        // `\x1b[K` clears what a longer previous line left behind.
        let _ = write!(out, "\r{line}\x1b[K");
        let _ = out.flush();
    }
}

/// `sent 1200/5000 messages, 1.2 MiB, 5400 msg/s, 5.3 MiB/s`.
pub fn line(messages: usize, total: usize, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "sent {messages}/{total} messages, {}, {:.0} msg/s, {}/s",
        human_bytes(bytes as f64),
        messages as f64 / secs,
        human_bytes(bytes as f64 / secs)
    )
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024.0 {
        return format!("{b:.0} B");
    }
    let mut v = b / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_messages_bytes_and_rate() {
        let l = line(1000, 4000, 3 * 1024 * 1024, Duration::from_secs(2));
        assert_eq!(l, "sent 1000/4000 messages, 3.0 MiB, 500 msg/s, 1.5 MiB/s");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn draws_in_place_at_most_every_200_ms_and_ends_the_line() {
        let mut p = Progress::new(Some(Vec::new()), 10);
        p.update(1, 10);
        p.update(2, 20); // within 200 ms of the first: skipped
        p.finish(10, 100);
        let out = String::from_utf8(p.out.take().unwrap()).unwrap();
        assert_eq!(out.matches('\r').count(), 2, "{out:?}");
        assert!(out.starts_with("\rsent 1/10 messages, 10 B"), "{out:?}");
        assert!(!out.contains("sent 2/10"), "{out:?}");
        assert!(out.contains("sent 10/10 messages, 100 B") && out.ends_with('\n'));
    }

    #[test]
    fn quiet_without_a_terminal() {
        let mut p: Progress<Vec<u8>> = Progress::new(None, 10);
        p.update(1, 10);
        p.finish(10, 100);
        assert!(!p.is_shown());
    }
}
