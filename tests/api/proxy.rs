//! A TCP proxy in front of Redis that a test can cut: `set_down(true)` closes every connection
//! and refuses new ones (Redis unreachable), `freeze_pubsub()` silently stops forwarding to the
//! subscriber connections (a dead link that sends no FIN), and `pubsub_upstream_addrs()` names
//! the subscriber connections as Redis sees them, for `CLIENT KILL ADDR`.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

struct Conn {
    upstream_local: SocketAddr,
    pubsub: Arc<AtomicBool>,
}

pub struct RedisProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    /// Bumped to close every open connection.
    epoch: watch::Sender<u64>,
    conns: Arc<Mutex<Vec<Conn>>>,
    next_epoch: AtomicU64,
}

impl RedisProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let (epoch, _) = watch::channel(0u64);
        let proxy = Self {
            addr,
            down: Arc::new(AtomicBool::new(false)),
            frozen: Arc::new(AtomicBool::new(false)),
            epoch,
            conns: Arc::new(Mutex::new(Vec::new())),
            next_epoch: AtomicU64::new(1),
        };
        let (down, frozen, conns, epoch) = (
            proxy.down.clone(),
            proxy.frozen.clone(),
            proxy.conns.clone(),
            proxy.epoch.clone(),
        );
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let Ok(upstream_local) = server.local_addr() else {
                    continue;
                };
                let pubsub = Arc::new(AtomicBool::new(false));
                if let Ok(mut list) = conns.lock() {
                    list.push(Conn {
                        upstream_local,
                        pubsub: pubsub.clone(),
                    });
                }
                let closed = epoch.subscribe();
                actix_web::rt::spawn(pipe(client, server, pubsub, frozen.clone(), closed));
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self
                .epoch
                .send(self.next_epoch.fetch_add(1, Ordering::SeqCst));
        }
    }

    /// Subscriber connections stop receiving anything, without being closed.
    pub fn freeze_pubsub(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    pub fn pubsub_upstream_addrs(&self) -> Vec<SocketAddr> {
        self.conns
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|c| c.pubsub.load(Ordering::SeqCst))
                    .map(|c| c.upstream_local)
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    pubsub: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    mut closed: watch::Receiver<u64>,
) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = closed.changed() => return,
            n = cr.read(&mut up) => {
                let Ok(n) = n else { return };
                if n == 0 { return }
                if !pubsub.load(Ordering::Relaxed)
                    && String::from_utf8_lossy(&up[..n]).to_ascii_uppercase().contains("SUBSCRIBE")
                {
                    pubsub.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&up[..n]).await.is_err() { return }
            }
            n = sr.read(&mut down) => {
                let Ok(n) = n else { return };
                if n == 0 { return }
                if pubsub.load(Ordering::Relaxed) && frozen.load(Ordering::SeqCst) {
                    continue; // swallowed: a silent, half-dead link
                }
                if cw.write_all(&down[..n]).await.is_err() { return }
            }
        }
    }
}
