//! Test harness (feature `test-util`): a throwaway PostgreSQL server for this and other
//! crates' tests.
//!
//! Needs the PostgreSQL server binaries (`initdb`, `postgres`): `$PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package). As root, the server runs as
//! the `postgres` OS user through `runuser` (PostgreSQL refuses to run as root).
//!
//! Panics instead of returning errors: it only runs inside tests, where a clear panic message
//! is the most useful report.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The directory holding `initdb` and `postgres`.
///
/// # Panics
/// If none is found, saying to install the `postgresql` package.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("postgres").is_file(),
            "PG_BIN={} has no `postgres` binary; install the postgresql package",
            dir.display()
        );
        return dir;
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (looked at $PG_BIN and /usr/lib/postgresql/*/bin); \
             install the postgresql package (apt-get install postgresql)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command that runs `bin` as the `postgres` OS user when we are root.
fn pg_command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A PostgreSQL server in a temporary directory on 127.0.0.1, killed (and its directory
/// removed) when dropped. `trust` authentication, superuser `postgres`.
pub struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    as_postgres: bool,
    child: Option<Child>,
}

impl TempPostgres {
    /// A server with `wal_level=logical` and room for 10 slots and WAL senders.
    pub async fn start() -> TempPostgres {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra or overriding `-c name=value` settings (e.g.
    /// `("wal_level", "replica")`).
    pub async fn start_with(settings: &[(&str, &str)]) -> TempPostgres {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bin = pg_bin_dir();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "s2sink-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown -R postgres {} failed", dir.display());
        }
        let out = pg_command(&bin.join("initdb"), as_postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut all = vec![
            ("wal_level", "logical"),
            ("max_replication_slots", "10"),
            ("max_wal_senders", "10"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "32MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>();
        for (k, v) in settings {
            all.retain(|(name, _)| name != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut pg = TempPostgres {
            dir,
            bin,
            port: 0,
            settings: all,
            as_postgres,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..3 {
            pg.port = free_port();
            match pg.spawn_and_wait().await {
                Ok(()) => return pg,
                Err(e) => failures.push(e),
            }
        }
        panic!("PostgreSQL did not start: {}", failures.join("; "));
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open server.log");
        let mut cmd = pg_command(&self.bin.join("postgres"), self.as_postgres);
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for (k, v) in &self.settings {
            cmd.args(["-c", &format!("{k}={v}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn postgres: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await
            {
                drop(conn);
                drop(client);
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "postgres exited with {status}: {}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                self.stop(true);
                return Err(format!(
                    "not ready within {READY_DEADLINE:?}: {}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The last lines of the server log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connected client (its connection task is spawned on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs `sql` (several statements allowed) on a fresh connection.
    pub async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The postmaster's PID (from `postmaster.pid`; the child may be `runuser`).
    fn postmaster_pid(&self) -> Option<String> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pidfile.lines().next().map(|l| l.trim().to_string())
    }

    /// Stops the server: fast shutdown (SIGINT), or immediate (SIGQUIT, like a crash).
    fn stop(&mut self, immediate: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = if immediate { "-QUIT" } else { "-INT" };
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args([signal, &pid]).status();
        } else {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (fast shutdown, or `immediate` like a crash) and starts it again on
    /// the same port and data directory.
    pub async fn restart(&mut self, immediate: bool) {
        self.stop(immediate);
        if let Err(e) = self.spawn_and_wait().await {
            panic!("PostgreSQL did not restart: {e}");
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
