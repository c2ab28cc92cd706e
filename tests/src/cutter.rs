//! A TCP forwarder on 127.0.0.1 that cuts connections after a random lifetime, or swallows
//! every answer: faults for traffic the HTTP/1.1 fault proxy cannot parse, such as S2's
//! append sessions (HTTP/2).
//!
//! Each accepted connection is forwarded byte for byte to the upstream and reset (linger 0)
//! after a lifetime drawn from the configured range, whatever is in flight on it: appends
//! sent but unanswered, answers half received. [`TcpCutter::disarm`] lets later connections
//! live, so a test can drain. [`TcpCutter::mute`] forwards requests but never a byte back:
//! S2 applies what it gets and the client waits for answers that never come.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The forwarder; dropping it stops accepting and aborts every connection.
pub struct TcpCutter {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpCutter {
    /// Forwards to `upstream` (`http://127.0.0.1:PORT`), cutting each connection after a
    /// lifetime uniform in `lifetime` (random from `seed`).
    pub async fn start(upstream: &str, seed: u64, lifetime: (Duration, Duration)) -> TcpCutter {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let armed = Arc::new(AtomicBool::new(true));
        let muted = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let (a, m, c) = (armed.clone(), muted.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let life = a.load(Relaxed).then(|| {
                    let (lo, hi) = lifetime;
                    let span = hi.saturating_sub(lo).as_millis() as u64;
                    lo + Duration::from_millis(rng.lock().unwrap().u64(0..=span))
                });
                if m.load(Relaxed) {
                    conns.spawn(forward_muted(client, upstream));
                } else {
                    conns.spawn(forward(client, upstream, life, c.clone()));
                }
            }
        });
        TcpCutter {
            addr,
            armed,
            muted,
            cuts,
            task,
        }
    }

    /// Connections accepted from now on forward requests but no answer (never cut).
    pub fn mute(&self) {
        self.muted.store(true, Relaxed);
    }

    /// `http://127.0.0.1:PORT` of the forwarder.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted from now on are never cut.
    pub fn disarm(&self) {
        self.armed.store(false, Relaxed);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Relaxed)
    }
}

impl Drop for TcpCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    life: Option<Duration>,
    cuts: Arc<AtomicU64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    match life {
        None => {
            let _ = copy.await;
        }
        Some(life) => {
            if tokio::time::timeout(life, copy).await.is_err() {
                // A reset, not a clean close: both ends see the connection fail mid-stream.
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
                cuts.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Forwards `client`'s bytes upstream and reads the upstream's answers into the void.
async fn forward_muted(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, _client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let mut void = tokio::io::sink();
    let down = tokio::io::copy(&mut server_read, &mut void);
    let _ = tokio::join!(up, down);
}
