//! The loopback network of a run without network namespaces (not root, or `--net proxy`):
//! every server listens on `127.0.0.1:<port>` and is reached only through its **proxy**, a
//! small tokio TCP relay on another loopback port that the server advertises (`--advertise`)
//! and that the peers list names. Node `i` dialing node `j` therefore goes through `j`'s
//! proxy, and so does every client.
//!
//! **Per-link faults with one membership.** Arbor keeps peer addresses in the Raft
//! membership, so every node dials node `j` at the same address: a relay per directed link
//! cannot be told apart by its address. Instead, `j`'s proxy asks the kernel who opened each
//! connection it accepts: the connecting socket is the `/proc/net/tcp` entry whose local
//! address is the accepted connection's peer and whose remote address is the proxy; its
//! inode is among the open descriptors (`/proc/<pid>/fd`) of exactly one process, and the
//! [`PidTable`] says which node that pid is (the cluster updates it at every start and
//! kill). A connection from node `i` follows the state of link `i → j`; anything else (the
//! harness's clients, `arbor` admin calls) is a client link, never faulted — as in the
//! namespace mode, where the harness reaches every node. So each directed node link has its
//! own [`LinkState`]:
//!
//! - [`LinkState::Open`]: bytes are relayed.
//! - [`LinkState::Stalled`]: nothing is relayed and new connections are held before they
//!   reach the server; bytes wait (TCP back-pressure) and flow again when the link opens,
//!   like packets dropped by `iptables` and retransmitted after the heal
//!   ([`CutMode::Stall`], the default).
//! - [`LinkState::Cut`]: the link's connections are reset (`SO_LINGER` 0) and new ones are
//!   reset at once, like a blackhole route ([`CutMode::Reset`]).
//!
//! A partition sets both directions of every cut pair. Reading `/proc` only needs the servers
//! to be this user's children, so no privilege is required. What the proxy counted (links
//! identified, client connections, connections it could not attribute) is reported by
//! [`Proxies::stats`] in `results.json`.

use super::nemesis::Grudge;
use anyhow::{Context, Result};
use serde_json::{json, Value as Json};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Relay buffer per direction of a connection.
const BUF: usize = 32 * 1024;

/// The state of one directed link (node `i` → node `j`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Relayed.
    Open,
    /// Held: nothing moves until it opens again.
    Stalled,
    /// Connections reset, new ones refused.
    Cut,
}

/// How a partition cuts a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// [`LinkState::Stalled`]: traffic hangs, like `iptables -j DROP`.
    Stall,
    /// [`LinkState::Cut`]: connections reset, like a blackhole route.
    Reset,
}

impl CutMode {
    /// Its `--partition-backend` name.
    pub fn name(self) -> &'static str {
        match self {
            CutMode::Stall => "proxy-stall",
            CutMode::Reset => "proxy-reset",
        }
    }

    /// Parses `auto|proxy-stall|proxy-reset` (`auto` = stall).
    pub fn choose(name: &str) -> Result<CutMode> {
        match name {
            "auto" | "proxy-stall" => Ok(CutMode::Stall),
            "proxy-reset" => Ok(CutMode::Reset),
            other => anyhow::bail!(
                "--partition-backend {other:?} does not exist in proxy mode (auto, proxy-stall, proxy-reset)"
            ),
        }
    }

    fn state(self) -> LinkState {
        match self {
            CutMode::Stall => LinkState::Stalled,
            CutMode::Reset => LinkState::Cut,
        }
    }
}

/// Which node each server pid is (index = node), kept current by the cluster.
#[derive(Debug, Default)]
pub struct PidTable {
    pids: Mutex<Vec<Option<u32>>>,
}

impl PidTable {
    /// A table for `n` nodes, none running.
    pub fn new(n: usize) -> PidTable {
        PidTable { pids: Mutex::new(vec![None; n]) }
    }

    /// Node `i` now runs as `pid` (`None`: not running).
    pub fn set(&self, i: usize, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        if i >= pids.len() {
            pids.resize(i + 1, None);
        }
        pids[i] = pid;
    }

    fn snapshot(&self) -> Vec<Option<u32>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Server `i`.
    Node(usize),
    /// Anything else (clients).
    Other,
}

/// Decodes a `/proc/net/tcp` address (`0100007F:1F41`): the IPv4 address is the kernel's
/// 32-bit word in native byte order, the port in host order.
pub fn parse_proc_addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    if ip.len() != 8 {
        return None;
    }
    let word = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(word.to_ne_bytes()), port))
}

/// The inode of the socket bound to `local` and connected to `remote`, from the text of
/// `/proc/net/tcp`.
pub fn find_inode(proc_net_tcp: &str, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u64> {
    proc_net_tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            return None;
        }
        (parse_proc_addr(f[1])? == local && parse_proc_addr(f[2])? == remote).then(|| f[9].parse().ok())?
    })
}

/// Whether process `pid` holds the socket `inode`.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
}

/// Who opened the connection whose client end is `peer`, accepted on `local` (blocking:
/// reads `/proc`).
pub fn identify(peer: SocketAddr, local: SocketAddr, pids: &PidTable) -> Source {
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else { return Source::Other };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return Source::Other };
    let Some(inode) = find_inode(&table, peer, local) else { return Source::Other };
    for (i, pid) in pids.snapshot().into_iter().enumerate() {
        if pid.is_some_and(|pid| holds_socket(pid, inode)) {
            return Source::Node(i);
        }
    }
    Source::Other
}

/// Connection counts, for the report.
#[derive(Debug, Default)]
struct Stats {
    node_links: AtomicU64,
    clients: AtomicU64,
    /// Connections that met their link stalled or cut at least once.
    faulted: AtomicU64,
    refused: AtomicU64,
}

/// The links' states: one watch channel per directed node link, and one always open for
/// client links.
struct Links {
    n: usize,
    node: Vec<watch::Sender<LinkState>>,
    client: watch::Sender<LinkState>,
}

impl Links {
    fn new(n: usize) -> Links {
        Links {
            n,
            node: (0..n * n).map(|_| watch::channel(LinkState::Open).0).collect(),
            client: watch::channel(LinkState::Open).0,
        }
    }

    fn link(&self, from: Source, to: usize) -> watch::Receiver<LinkState> {
        match from {
            Source::Node(i) if i < self.n && i != to => self.node[i * self.n + to].subscribe(),
            _ => self.client.subscribe(),
        }
    }

    fn set(&self, from: usize, to: usize, state: LinkState) {
        self.node[from * self.n + to].send_replace(state);
    }
}

/// One proxy per node, and the state of every directed link between nodes. Dropping it
/// stops the proxies and closes every relayed connection.
pub struct Proxies {
    links: Arc<Links>,
    pids: Arc<PidTable>,
    stats: Arc<Stats>,
    proxy_addrs: Vec<SocketAddr>,
    server_addrs: Vec<SocketAddr>,
    /// How partitions cut links.
    pub mode: CutMode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A loopback port nobody listens on now (the server binds it shortly after).
fn free_port() -> Result<SocketAddr> {
    let l = StdListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?)
}

impl Proxies {
    /// Starts a proxy for each of `n` nodes (must run inside a tokio runtime).
    pub fn start(n: usize, mode: CutMode) -> Result<Proxies> {
        let links = Arc::new(Links::new(n));
        let pids = Arc::new(PidTable::new(n));
        let stats = Arc::new(Stats::default());
        let (mut proxy_addrs, mut server_addrs, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..n {
            let std_listener = StdListener::bind("127.0.0.1:0").context("binding a proxy port")?;
            std_listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_listener)?;
            let server = free_port()?;
            proxy_addrs.push(listener.local_addr()?);
            server_addrs.push(server);
            tasks.push(tokio::spawn(accept_loop(listener, j, server, links.clone(), pids.clone(), stats.clone())));
        }
        Ok(Proxies { links, pids, stats, proxy_addrs, server_addrs, mode, tasks })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.proxy_addrs.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.proxy_addrs.is_empty()
    }

    /// The address everyone uses for node `i` (its proxy).
    pub fn proxy_addr(&self, i: usize) -> String {
        self.proxy_addrs[i].to_string()
    }

    /// Where node `i`'s server really listens.
    pub fn server_addr(&self, i: usize) -> String {
        self.server_addrs[i].to_string()
    }

    /// The pid table the cluster keeps current.
    pub fn pids(&self) -> Arc<PidTable> {
        self.pids.clone()
    }

    /// Sets the directed link `from → to`.
    pub fn set(&self, from: usize, to: usize, state: LinkState) {
        self.links.set(from, to, state);
    }

    /// Replaces the current cuts with `grudge`'s, both directions of each.
    pub fn partition(&self, grudge: &Grudge) {
        let n = self.links.n;
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let state = if grudge.connected(a, b) { LinkState::Open } else { self.mode.state() };
                    self.set(a, b, state);
                }
            }
        }
    }

    /// Opens every link.
    pub fn heal(&self) {
        self.partition(&Grudge::default());
    }

    /// What the proxies saw: connections attributed to node links, client connections,
    /// connections that met their link stalled or cut, connections reset by a cut.
    pub fn stats(&self) -> Json {
        json!({
            "node-link-connections": self.stats.node_links.load(Ordering::Relaxed),
            "client-connections": self.stats.clients.load(Ordering::Relaxed),
            "faulted-connections": self.stats.faulted.load(Ordering::Relaxed),
            "reset-connections": self.stats.refused.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: usize,
    server: SocketAddr,
    links: Arc<Links>,
    pids: Arc<PidTable>,
    stats: Arc<Stats>,
) {
    // Connections live in this set: aborting the accept loop closes them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (links, pids, stats) = (links.clone(), pids.clone(), stats.clone());
                conns.spawn(async move {
                    let local = sock.local_addr().unwrap_or(peer);
                    let source = tokio::task::spawn_blocking(move || identify(peer, local, &pids))
                        .await
                        .unwrap_or(Source::Other);
                    match source {
                        Source::Node(_) => stats.node_links.fetch_add(1, Ordering::Relaxed),
                        Source::Other => stats.clients.fetch_add(1, Ordering::Relaxed),
                    };
                    let link = links.link(source, to);
                    let (end, faulted) = relay(sock, server, link).await;
                    if faulted {
                        stats.faulted.fetch_add(1, Ordering::Relaxed);
                    }
                    if end == End::Cut {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// How one direction of a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    Cut,
    Error,
}

/// Waits until the link is open (`true`) or cut (`false`).
async fn wait_open(link: &mut watch::Receiver<LinkState>) -> bool {
    loop {
        match *link.borrow_and_update() {
            LinkState::Open => return true,
            LinkState::Cut => return false,
            LinkState::Stalled => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

/// Waits until the link is cut.
async fn wait_cut(link: &mut watch::Receiver<LinkState>) {
    loop {
        if *link.borrow_and_update() == LinkState::Cut || link.changed().await.is_err() {
            return;
        }
    }
}

async fn pump<R, W>(from: &mut R, to: &mut W, mut link: watch::Receiver<LinkState>) -> End
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        if !wait_open(&mut link).await {
            return End::Cut;
        }
        // Reading is cancel-safe: a state change interrupts it without losing bytes.
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return End::Eof;
                }
                Ok(n) => n,
                Err(_) => return End::Error,
            },
            _ = link.changed() => continue,
        };
        // Bytes read before a stall wait for the link to open again.
        if !wait_open(&mut link).await {
            return End::Cut;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return End::Error },
            _ = wait_cut(&mut link) => return End::Cut,
        }
    }
}

/// Relays `client` to the server at `server` under `link`; returns how it ended, and
/// whether the link was ever stalled or cut while the connection lived.
async fn relay(client: TcpStream, server: SocketAddr, link: watch::Receiver<LinkState>) -> (End, bool) {
    let mut watcher = link.clone();
    let faulted = async move {
        loop {
            if *watcher.borrow_and_update() != LinkState::Open {
                return;
            }
            if watcher.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(faulted);
    let relayed = relay_inner(client, server, link);
    tokio::pin!(relayed);
    tokio::select! {
        biased;
        _ = &mut faulted => {}
        end = &mut relayed => return (end, end == End::Cut),
    }
    (relayed.await, true)
}

async fn relay_inner(mut client: TcpStream, server: SocketAddr, mut link: watch::Receiver<LinkState>) -> End {
    // A connection made while the link is stalled waits before reaching the server.
    // Linger 0: closing sends a reset at once (a zero linger never blocks the thread).
    #[allow(deprecated)]
    let reset = |s: &TcpStream| {
        let _ = s.set_linger(Some(Duration::ZERO));
    };
    if !wait_open(&mut link).await {
        reset(&client);
        return End::Cut;
    }
    let mut upstream = tokio::select! {
        r = TcpStream::connect(server) => match r {
            Ok(s) => s,
            Err(_) => {
                // The server is down (killed, restarting): the client sees a reset, as
                // it would connecting to a dead port.
                reset(&client);
                return End::Error;
            }
        },
        _ = wait_cut(&mut link) => {
            reset(&client);
            return End::Cut;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pump(&mut cr, &mut uw, link.clone());
        let down = pump(&mut ur, &mut cw, link);
        tokio::pin!(up, down);
        let (mut up_end, mut down_end) = (None, None);
        loop {
            tokio::select! {
                e = &mut up, if up_end.is_none() => up_end = Some(e),
                e = &mut down, if down_end.is_none() => down_end = Some(e),
            }
            match (up_end, down_end) {
                (Some(End::Cut), _) | (_, Some(End::Cut)) => break End::Cut,
                (Some(End::Error), _) | (_, Some(End::Error)) => break End::Error,
                (Some(End::Eof), Some(End::Eof)) => break End::Eof,
                _ => {}
            }
        }
    };
    if end != End::Eof {
        reset(&client);
        reset(&upstream);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_decoded() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0\n\
            1: 0100007F:D431 0100007F:1F41 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0\n";
        let a = parse_proc_addr("0100007F:1F41").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(a, "127.0.0.1:8001".parse().unwrap());
        }
        let client = parse_proc_addr("0100007F:D431").unwrap();
        assert_eq!(find_inode(text, client, a), Some(222));
        assert_eq!(find_inode(text, a, client), None, "the direction matters");
        assert_eq!(parse_proc_addr("zz"), None);
    }

    #[test]
    fn cut_modes_parse() {
        assert_eq!(CutMode::choose("auto").unwrap(), CutMode::Stall);
        assert_eq!(CutMode::choose("proxy-reset").unwrap(), CutMode::Reset);
        assert!(CutMode::choose("iptables").unwrap_err().to_string().contains("proxy mode"));
    }

    /// An echo server standing in for node 1.
    async fn echo(listener: TcpListener) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn a_link_is_told_apart_by_its_process_and_can_be_stalled_cut_and_healed() {
        let proxies = Proxies::start(2, CutMode::Stall).unwrap();
        tokio::spawn(echo(TcpListener::bind(proxies.server_addr(1)).await.unwrap()));
        let wait = Duration::from_millis(300);

        // This test process plays node 0: its connections to node 1 are link 0 -> 1.
        proxies.pids().set(0, Some(std::process::id()));
        let mut s = TcpStream::connect(proxies.proxy_addr(1)).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");
        assert_eq!(proxies.stats()["node-link-connections"], 1, "{}", proxies.stats());
        assert_eq!(proxies.stats()["faulted-connections"], 0);

        // A stalled link holds the bytes until it opens again.
        proxies.set(0, 1, LinkState::Stalled);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::time::timeout(wait, round_trip(&mut s, b"held")).await.is_err(), "stalled");
        proxies.set(0, 1, LinkState::Open);
        let mut rest = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut rest)).await.unwrap().unwrap();
        assert_eq!(&rest, b"held");

        // The reverse direction is another link: cutting 1 -> 0 leaves 0 -> 1 alone.
        proxies.set(1, 0, LinkState::Cut);
        assert_eq!(round_trip(&mut s, b"still").await.unwrap(), b"still");

        // A cut resets the link's connections and every new one.
        proxies.set(0, 1, LinkState::Cut);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "the connection was closed: {r:?}");
        let mut again = TcpStream::connect(proxies.proxy_addr(1)).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&mut again, b"x")).await.unwrap();
        assert!(r.is_err(), "a new connection on a cut link is reset");
        assert!(proxies.stats()["faulted-connections"].as_u64().unwrap() >= 2, "{}", proxies.stats());

        // Another process's connections (here: once this one is not node 0) are client
        // links, never cut.
        proxies.pids().set(0, None);
        let mut client = TcpStream::connect(proxies.proxy_addr(1)).await.unwrap();
        assert_eq!(round_trip(&mut client, b"client").await.unwrap(), b"client");
        assert!(proxies.stats()["client-connections"].as_u64().unwrap() >= 1);

        // Healed: node 0 gets through again.
        proxies.pids().set(0, Some(std::process::id()));
        proxies.heal();
        let mut healed = TcpStream::connect(proxies.proxy_addr(1)).await.unwrap();
        assert_eq!(round_trip(&mut healed, b"back").await.unwrap(), b"back");
    }
}
