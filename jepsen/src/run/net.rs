//! The test network of a run, in one of two modes ([`Network`]):
//!
//! - **`netns`** (root): one network namespace per node, joined by a bridge in the root
//!   namespace, on a private /24 that only these namespaces use (below).
//! - **`proxy`** (no root needed; the fallback when namespaces are unavailable, or
//!   `--net proxy`): every node on loopback behind a TCP proxy that faults each directed
//!   link between nodes on its own ([`super::proxy`]).
//!
//! ```text
//!  root namespace: harness clients ── arbj-br0 (10.250.77.1/24)
//!                                      ├── arbj-v1 ══ eth0 in netns arbj-n1 (10.250.77.11)
//!                                      ├── arbj-v2 ══ eth0 in netns arbj-n2 (10.250.77.12)
//!                                      └── ...
//! ```
//!
//! Partitions are made inside the node namespaces only, never in the root namespace:
//! - `iptables` backend (when the `iptables` tool exists): node A gets
//!   `iptables -A INPUT -s <B> -j DROP` for every B it must not hear from, as Jepsen does;
//!   packets vanish, connections hang.
//! - `route` backend (iproute2 alone): node A gets `ip route add blackhole <B>/32`; A's
//!   packets to B are refused at once (connect fails with EINVAL), replies included.
//!
//! Both are applied on both sides of each cut link, so links are cut both ways, and the
//! harness in the root namespace still reaches every node (Jepsen's clients do too).
//!
//! Every name starts with [`PREFIX`]; [`cleanup_leftovers`] removes whatever a crashed run
//! left (killing the processes still inside its namespaces, which only this harness starts),
//! and [`Network`] tears its own setup down when dropped. The bridge has netfilter calls off
//! (`nf_call_iptables 0`), so the root namespace's firewall never sees the test traffic.
//! Building the command lines is pure ([`Layout`], [`Backend`]); running them is not.

use super::cluster::{NodeNet, PORT};
use super::nemesis::Grudge;
use super::proxy::{CutMode, PidTable, Proxies};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// `--net`: which network a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// Namespaces when they can be made (root), else proxies.
    Auto,
    /// Network namespaces (root only).
    Netns,
    /// Loopback proxies.
    Proxy,
}

impl NetMode {
    /// Parses `auto|netns|proxy`.
    pub fn parse(name: &str) -> Result<NetMode> {
        match name {
            "auto" => Ok(NetMode::Auto),
            "netns" => Ok(NetMode::Netns),
            "proxy" => Ok(NetMode::Proxy),
            other => bail!("unknown --net {other:?} (auto, netns, proxy)"),
        }
    }

    /// Decides between namespaces and proxies (`true`: namespaces); `Auto` explains a
    /// fallback on stderr.
    pub fn use_namespaces(self) -> Result<bool> {
        match self {
            NetMode::Netns => require_namespaces().map(|()| true),
            NetMode::Proxy => Ok(false),
            NetMode::Auto => match require_namespaces() {
                Ok(()) => Ok(true),
                Err(e) => {
                    eprintln!("arbor-jepsen: {e:#}; falling back to loopback TCP proxies (--net proxy)");
                    Ok(false)
                }
            },
        }
    }
}

/// The network of a run; torn down on drop.
pub enum Network {
    /// One namespace per node.
    Namespaces(Namespaces),
    /// Loopback proxies.
    Proxy(Proxies),
}

impl Network {
    /// Builds the network for `nodes` nodes: namespaces on `subnet`, or proxies.
    /// `partition_backend` is `auto` or a name of the chosen mode's backends.
    pub fn setup(namespaces: bool, subnet: &str, nodes: usize, partition_backend: &str) -> Result<Network> {
        if namespaces {
            let layout = Layout::new(subnet, nodes)?;
            let backend = Backend::choose(partition_backend)?;
            Ok(Network::Namespaces(Namespaces::setup(layout, backend)?))
        } else {
            if nodes == 0 || nodes > 200 {
                bail!("--nodes must be within 1..=200");
            }
            Ok(Network::Proxy(Proxies::start(nodes, CutMode::choose(partition_backend)?)?))
        }
    }

    /// `netns` or `proxy`.
    pub fn mode(&self) -> &'static str {
        match self {
            Network::Namespaces(_) => "netns",
            Network::Proxy(_) => "proxy",
        }
    }

    /// How partitions are made.
    pub fn backend(&self) -> &'static str {
        match self {
            Network::Namespaces(n) => n.backend.name(),
            Network::Proxy(p) => p.mode.name(),
        }
    }

    /// Where each node runs and how it is reached.
    pub fn node_nets(&self) -> Vec<NodeNet> {
        match self {
            Network::Namespaces(n) => (0..n.layout.nodes)
                .map(|i| {
                    let addr = format!("{}:{PORT}", n.layout.node_ip(i));
                    NodeNet { netns: Some(n.layout.netns(i)), listen: addr.clone(), advertise: addr }
                })
                .collect(),
            Network::Proxy(p) => (0..p.len())
                .map(|i| NodeNet { netns: None, listen: p.server_addr(i), advertise: p.proxy_addr(i) })
                .collect(),
        }
    }

    /// The pid table the cluster must keep current (proxy mode).
    pub fn pids(&self) -> Option<Arc<PidTable>> {
        match self {
            Network::Namespaces(_) => None,
            Network::Proxy(p) => Some(p.pids()),
        }
    }

    /// Replaces the current cuts with `grudge` (heals first).
    pub async fn partition(&self, grudge: &Grudge) -> Result<()> {
        match self {
            Network::Namespaces(n) => n.partition(grudge).await,
            Network::Proxy(p) => {
                p.partition(grudge);
                Ok(())
            }
        }
    }

    /// Removes every cut.
    pub async fn heal(&self) -> Result<()> {
        match self {
            Network::Namespaces(n) => n.heal().await,
            Network::Proxy(p) => {
                p.heal();
                Ok(())
            }
        }
    }

    /// For `results.json`: mode, backend, and the proxies' counts.
    pub fn describe(&self) -> Json {
        match self {
            Network::Namespaces(n) => json!({"mode": "netns", "partition-backend": n.backend.name()}),
            Network::Proxy(p) => json!({"mode": "proxy", "partition-backend": p.mode.name(), "proxy": p.stats()}),
        }
    }
}

/// Every namespace and link this harness creates is named with this prefix.
pub const PREFIX: &str = "arbj-";

/// Names and addresses of the test network (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// First three octets of the /24.
    pub subnet: [u8; 3],
    /// Number of nodes.
    pub nodes: usize,
}

/// Node `i` (0-based) gets host number `NODE_HOST_BASE + i + 1`.
const NODE_HOST_BASE: u8 = 10;

impl Layout {
    /// A layout for `nodes` nodes on `subnet` (`a.b.c.0/24`).
    pub fn new(subnet: &str, nodes: usize) -> Result<Layout> {
        let s = subnet.trim_end_matches("/24");
        let addr: Ipv4Addr = s.parse().with_context(|| format!("--subnet {subnet:?} is not an IPv4 a.b.c.0/24"))?;
        let o = addr.octets();
        if o[3] != 0 {
            bail!("--subnet {subnet:?} must be a /24 network address ending in .0");
        }
        if !(o[0] == 10 || (o[0] == 172 && (16..32).contains(&o[1])) || (o[0] == 192 && o[1] == 168)) {
            bail!("--subnet {subnet:?} must be a private (RFC 1918) network");
        }
        if nodes == 0 || nodes > 200 {
            bail!("--nodes must be within 1..=200");
        }
        Ok(Layout { subnet: [o[0], o[1], o[2]], nodes })
    }

    /// The bridge device in the root namespace.
    pub fn bridge(&self) -> String {
        format!("{PREFIX}br0")
    }

    /// The namespace of node `i`.
    pub fn netns(&self, i: usize) -> String {
        format!("{PREFIX}n{}", i + 1)
    }

    /// The root-namespace end of node `i`'s veth pair.
    pub fn veth(&self, i: usize) -> String {
        format!("{PREFIX}v{}", i + 1)
    }

    /// The bridge's address.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, NODE_HOST_BASE + 1 + i as u8)
    }

    /// Whether `ip` is in the test /24.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.subnet
    }

    /// The `ip` commands that build the network, in order.
    pub fn setup_commands(&self) -> Vec<Vec<String>> {
        let br = self.bridge();
        let mut cmds = vec![
            args(&["link", "add", &br, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0"]),
            args(&["addr", "add", &format!("{}/24", self.bridge_ip()), "dev", &br]),
            args(&["link", "set", &br, "up"]),
        ];
        for i in 0..self.nodes {
            let (ns, veth) = (self.netns(i), self.veth(i));
            cmds.push(args(&["netns", "add", &ns]));
            cmds.push(args(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]));
            cmds.push(args(&["link", "set", &veth, "master", &br, "up"]));
            cmds.push(args(&["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(i)), "dev", "eth0"]));
            cmds.push(args(&["-n", &ns, "link", "set", "eth0", "up"]));
            cmds.push(args(&["-n", &ns, "link", "set", "lo", "up"]));
        }
        cmds
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// How partitions are made inside the namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables -A INPUT -s B -j DROP` (silent drops).
    Iptables,
    /// `ip route add blackhole B/32` (immediate errors).
    Route,
}

impl Backend {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Route => "route",
        }
    }

    /// Parses `auto|iptables|route`; `auto` picks iptables when the tool exists.
    pub fn choose(name: &str) -> Result<Backend> {
        match name {
            "iptables" => Ok(Backend::Iptables),
            "route" => Ok(Backend::Route),
            "auto" => Ok(if tool_exists("iptables") { Backend::Iptables } else { Backend::Route }),
            other => bail!("unknown --partition-backend {other:?} (auto, iptables, route)"),
        }
    }

    /// The command (argv, stdin) that makes `ns` drop traffic from/to `blocked`.
    pub fn cut_command(self, ns: &str, blocked: &[Ipv4Addr]) -> (Vec<String>, String) {
        match self {
            Backend::Iptables => {
                let mut rules = String::from("*filter\n");
                for ip in blocked {
                    rules.push_str(&format!("-A INPUT -s {ip}/32 -j DROP\n"));
                }
                rules.push_str("COMMIT\n");
                (args(&["netns", "exec", ns, "iptables-restore", "-w", "--noflush"]), rules)
            }
            Backend::Route => {
                let batch: String = blocked.iter().map(|ip| format!("route add blackhole {ip}/32\n")).collect();
                (args(&["-n", ns, "-batch", "-"]), batch)
            }
        }
    }

    /// The command that removes every cut of `ns`.
    pub fn heal_command(self, ns: &str) -> Vec<String> {
        match self {
            Backend::Iptables => args(&["netns", "exec", ns, "iptables", "-w", "-F", "INPUT"]),
            Backend::Route => args(&["-n", ns, "route", "flush", "type", "blackhole"]),
        }
    }
}

fn tool_exists(name: &str) -> bool {
    Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Runs `ip ARGS` (with `stdin` if given); an error carries its stderr.
pub fn ip(argv: &[String], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(argv).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().context("running `ip` (iproute2 is required)")?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Async [`ip`], for faults applied while clients run.
pub async fn ip_async(argv: Vec<String>, stdin: Option<String>) -> Result<String> {
    tokio::task::spawn_blocking(move || ip(&argv, stdin.as_deref())).await.map_err(|e| anyhow!("ip task: {e}"))?
}

/// Fails clearly unless network namespaces can be made (root, iproute2).
pub fn require_namespaces() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "network namespaces (--net netns) need root: every node gets its own namespace \
             behind a bridge (run as root, e.g. sudo scripts/jepsen.sh ...)"
        );
    }
    ip(&args(&["netns", "list"]), None).context("network namespaces are unavailable")?;
    Ok(())
}

/// Removes namespaces and links named with [`PREFIX`] left by an earlier run, killing
/// (SIGKILL) the processes still inside those namespaces. Returns what was removed.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in ip(&args(&["netns", "list"]), None)?.lines() {
        let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(PREFIX)) else { continue };
        if let Ok(pids) = ip(&args(&["netns", "pids", name]), None) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain syscall; the pid is a process inside our own test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                removed.push(format!("process {pid} in {name}"));
            }
        }
        ip(&args(&["netns", "del", name]), None)?;
        removed.push(format!("netns {name}"));
    }
    for line in ip(&args(&["-o", "link", "show"]), None)?.lines() {
        // `3: arbj-br0: <...>` or `4: arbj-v1@if2: <...>`
        let Some(name) = line.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("").to_string()) else {
            continue;
        };
        if name.starts_with(PREFIX) {
            // A veth may already be gone with its namespace.
            if ip(&args(&["link", "del", &name]), None).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    Ok(removed)
}

/// The namespaces of a run; torn down on drop.
pub struct Namespaces {
    /// Names and addresses.
    pub layout: Layout,
    /// How partitions are made.
    pub backend: Backend,
}

impl Namespaces {
    /// Cleans leftovers, checks the subnet is free, builds the network.
    pub fn setup(layout: Layout, backend: Backend) -> Result<Namespaces> {
        let leftovers = cleanup_leftovers()?;
        if !leftovers.is_empty() {
            eprintln!("arbor-jepsen: cleaned leftovers of an earlier run: {}", leftovers.join(", "));
        }
        for line in ip(&args(&["-4", "-o", "addr", "show"]), None)?.lines() {
            let mut words = line.split_whitespace();
            let dev = words.nth(1).unwrap_or("");
            let Some(addr) = words.skip_while(|w| *w != "inet").nth(1) else { continue };
            let ip_part = addr.split('/').next().unwrap_or("");
            if let Ok(a) = ip_part.parse::<Ipv4Addr>() {
                if layout.contains(a) {
                    bail!("the test subnet {}.0/24 is already used by {dev} ({addr}); pick another with --subnet", {
                        let [x, y, z] = layout.subnet;
                        format!("{x}.{y}.{z}")
                    });
                }
            }
        }
        if backend == Backend::Iptables && !tool_exists("iptables-restore") {
            bail!("--partition-backend iptables needs iptables and iptables-restore (apt-get install iptables)");
        }
        let net = Namespaces { layout, backend };
        for cmd in net.layout.setup_commands() {
            ip(&cmd, None)?;
        }
        if backend == Backend::Iptables {
            // Fail now, not at the first partition, if iptables cannot work in a namespace.
            ip(&backend.heal_command(&net.layout.netns(0)), None).context("iptables inside a test namespace")?;
        }
        Ok(net)
    }

    /// Replaces the current cuts with `grudge` (heals first).
    pub async fn partition(&self, grudge: &Grudge) -> Result<()> {
        self.heal().await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.layout.nodes {
            let blocked: Vec<Ipv4Addr> = grudge.blocked(i).into_iter().map(|b| self.layout.node_ip(b)).collect();
            if blocked.is_empty() {
                continue;
            }
            let (argv, stdin) = self.backend.cut_command(&self.layout.netns(i), &blocked);
            tasks.spawn(ip_async(argv, Some(stdin)));
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| anyhow!("partition task: {e}"))??;
        }
        Ok(())
    }

    /// Removes every cut.
    pub async fn heal(&self) -> Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.layout.nodes {
            tasks.spawn(ip_async(self.backend.heal_command(&self.layout.netns(i)), None));
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| anyhow!("heal task: {e}"))??;
        }
        Ok(())
    }

    fn teardown(&self) {
        for i in 0..self.layout.nodes {
            // Deleting the root end removes the pair at once; a namespace is destroyed
            // asynchronously, and would leave its veth behind for a moment.
            let _ = ip(&args(&["link", "del", &self.layout.veth(i)]), None);
            let _ = ip(&args(&["netns", "del", &self.layout.netns(i)]), None);
        }
        let _ = ip(&args(&["link", "del", &self.layout.bridge()]), None);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_stay_in_the_test_subnet() {
        let l = Layout::new("10.250.77.0/24", 3).unwrap();
        assert_eq!(l.netns(0), "arbj-n1");
        assert_eq!(l.veth(2), "arbj-v3");
        assert_eq!(l.node_ip(0).to_string(), "10.250.77.11");
        assert_eq!(l.bridge_ip().to_string(), "10.250.77.1");
        let cmds = l.setup_commands();
        assert_eq!(cmds.len(), 3 + 3 * 6);
        for c in &cmds {
            let text = c.join(" ");
            assert!(text.contains(PREFIX) || text.contains("eth0"), "{text}");
            for word in c {
                if let Ok(ip) = word.split('/').next().unwrap().parse::<Ipv4Addr>() {
                    assert!(l.contains(ip), "{text} touches {ip}");
                }
            }
        }
        assert!(Layout::new("8.8.8.0/24", 3).is_err(), "public subnets are refused");
        assert!(Layout::new("10.1.2.3", 3).is_err());
    }

    #[test]
    fn cut_commands_only_run_inside_the_namespace() {
        let blocked = [Ipv4Addr::new(10, 250, 77, 12), Ipv4Addr::new(10, 250, 77, 13)];
        let (argv, rules) = Backend::Iptables.cut_command("arbj-n1", &blocked);
        assert_eq!(argv[..3], args(&["netns", "exec", "arbj-n1"])[..]);
        assert_eq!(
            rules,
            "*filter\n-A INPUT -s 10.250.77.12/32 -j DROP\n-A INPUT -s 10.250.77.13/32 -j DROP\nCOMMIT\n"
        );
        let (argv, batch) = Backend::Route.cut_command("arbj-n1", &blocked);
        assert_eq!(argv, args(&["-n", "arbj-n1", "-batch", "-"]));
        assert_eq!(batch.lines().count(), 2);
        assert!(Backend::Route.heal_command("arbj-n2").contains(&"arbj-n2".to_string()));
        assert!(Backend::Iptables.heal_command("arbj-n2").starts_with(&args(&["netns", "exec", "arbj-n2"])));
    }
}
