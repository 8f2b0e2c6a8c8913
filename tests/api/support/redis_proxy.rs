//! Redis: its address, and a proxy in front of it that a test can cut.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use super::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

// Redis: its address, and a proxy in front of it that a test can cut.

/// The `host:port` of TEST_REDIS_URL.
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string();
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:6379")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())
        .expect("TEST_REDIS_URL resolves")
}

// A TCP proxy in front of Redis that a test can cut: `set_down(true)` closes every connection
// and refuses new ones (Redis unreachable), `refuse_new(true)` refuses new ones only,
// `freeze_pubsub()` silently stops forwarding to the subscriber connections (a dead link that
// sends no FIN), `hold_replies()` keeps Redis's answers on the other connections open at that
// moment back (commands still reach Redis and run: reads in flight; new connections go on), and `pubsub_upstream_addrs()` names the
// subscriber connections as Redis sees them, for `CLIENT KILL ADDR`.
struct Conn {
    upstream_local: SocketAddr,
    pubsub: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
}

pub struct RedisProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
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
            refusing: Arc::new(AtomicBool::new(false)),
            frozen: Arc::new(AtomicBool::new(false)),
            epoch,
            conns: Arc::new(Mutex::new(Vec::new())),
            next_epoch: AtomicU64::new(1),
        };
        let (down, refusing, frozen, conns, epoch) = (
            proxy.down.clone(),
            proxy.refusing.clone(),
            proxy.frozen.clone(),
            proxy.conns.clone(),
            proxy.epoch.clone(),
        );
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) || refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let Ok(upstream_local) = server.local_addr() else {
                    continue;
                };
                let links = Links {
                    pubsub: Arc::new(AtomicBool::new(false)),
                    frozen: frozen.clone(),
                    held: Arc::new(AtomicBool::new(false)),
                };
                if let Ok(mut list) = conns.lock() {
                    list.push(Conn {
                        upstream_local,
                        pubsub: links.pubsub.clone(),
                        held: links.held.clone(),
                    });
                }
                let closed = epoch.subscribe();
                actix_web::rt::spawn(pipe(client, server, links, closed));
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

    /// New connections are refused; open ones go on.
    pub fn refuse_new(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Subscriber connections stop receiving anything, without being closed.
    pub fn freeze_pubsub(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Answers on the open non-subscriber connections are held back until released (in order,
    /// nothing lost); connections opened later are not held.
    pub fn hold_replies(&self, held: bool) {
        if let Ok(list) = self.conns.lock() {
            for c in list.iter() {
                let hold = held && !c.pubsub.load(Ordering::SeqCst);
                c.held.store(hold, Ordering::SeqCst);
            }
        }
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

/// One connection's switches: whether it subscribed, the proxy's freeze, its own hold.
struct Links {
    pubsub: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
}

async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    links: Links,
    mut closed: watch::Receiver<u64>,
) {
    let pubsub = links.pubsub.clone();
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
                if pubsub.load(Ordering::Relaxed) {
                    if links.frozen.load(Ordering::SeqCst) {
                        continue; // swallowed: a silent, half-dead link
                    }
                } else {
                    while links.held.load(Ordering::SeqCst) {
                        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if cw.write_all(&down[..n]).await.is_err() { return }
            }
        }
    }
}
