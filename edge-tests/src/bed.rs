//! The test bed: a hub network namespace holding a bridge, and one namespace per host (node,
//! origin registry, mirror, scheduler, tracker) joined to it by a veth pair whose two ends are
//! shaped with `tc tbf`: upload on the host's `eth0`, download on its port in the hub.
//!
//! ```text
//!   pc<pid>x<n>-hub:  br0 ── h1 ── h2 ── h3 ...        (tbf on h<i>: host i's download)
//!                            │     │     │
//!   pc<pid>x<n>-origin eth0  │     │     │             (tbf on eth0: host i's upload)
//!   pc<pid>x<n>-mirror ──────┘     │     │
//!   pc<pid>x<n>-n1     ────────────┘     ...
//! ```
//!
//! Every bed has its own hub, so beds of parallel runs may use the same 10.77.0.0/16 addresses;
//! only namespace names must differ, and they carry the process id and a counter. The bed owns
//! every process it starts inside its namespaces; dropping it (also while a test panics) kills
//! them, deletes the namespaces and removes its temp dir.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

/// Tools the bed itself needs; clients (skopeo, aria2c, ...) are checked by who uses them.
const BED_TOOLS: &[&str] = &["ip", "tc", "iptables", "curl"];
/// How long a process gets to print its ready line or answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
static BEDS: AtomicU32 = AtomicU32::new(0);

/// One host of the bed: a namespace with one address on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its port in the hub namespace (`h<i>`), where its download is shaped.
    hub_port: String,
}

impl Host {
    /// Its port in the hub: what that port sends is this host's download.
    pub fn hub_port(&self) -> &str {
        &self.hub_port
    }
}

/// A host's two link rates in bits per second: upload is shaped on its `eth0`, download on its
/// port in the hub. An edge site's uplink is often a fraction of its downlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub up_bps: u64,
    pub down_bps: u64,
}

impl Link {
    pub fn symmetric(bps: u64) -> Link {
        Link {
            up_bps: bps,
            down_bps: bps,
        }
    }
}

/// A process the bed started; `Bed::kill` ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcId(u32);

pub struct Bed {
    prefix: String,
    hub: String,
    hosts: Mutex<Vec<Host>>,
    procs: Mutex<HashMap<ProcId, Child>>,
    next_proc: AtomicU32,
    dir: TempDir,
    mtu: u32,
    congestion: Option<String>,
}

/// TCP congestion control in every host of a bed unless told otherwise: Linux's own default,
/// what an edge node runs unless someone chose otherwise. A machine may default to another
/// (`bbr` on some cloud images); through `tbf`'s short queue BBR v1 retransmits a fifth of its
/// segments with a dozen flows, which measures the emulation more than the protocol on top.
pub const DEFAULT_CONGESTION: &str = "cubic";

impl Bed {
    /// A hub namespace with a bridge, and nothing else yet, links at the usual 1500-byte MTU,
    /// TCP [`DEFAULT_CONGESTION`] in every host.
    /// Fails, saying what is missing, when not run as root or when a tool is not installed.
    pub fn new() -> Result<Bed> {
        Bed::with_mtu(1500)
    }

    /// Like [`Bed::new`], every link (both veth ends, so the bridge too) at `mtu` bytes. Jumbo
    /// frames do not change what a shaped link carries per second, but they cut the packets, and
    /// with them the kernel's per-packet work, about sixfold: on a 2-core machine emulating 32
    /// hosts that work, not the links, is what runs out first at 1500 bytes
    /// (`scripts/bench-bed-capacity.sh`).
    pub fn with_mtu(mtu: u32) -> Result<Bed> {
        Bed::with_options(mtu, Some(DEFAULT_CONGESTION))
    }

    /// Like [`Bed::with_mtu`], every host's TCP congestion control set to `congestion`
    /// (`None`: the machine's default, as `net.ipv4.tcp_congestion_control` says).
    pub fn with_options(mtu: u32, congestion: Option<&str>) -> Result<Bed> {
        if !(1280..=65_000).contains(&mtu) {
            bail!("MTU {mtu}: use 1280 to 65000 bytes");
        }
        if let Some(cc) = congestion {
            let available =
                fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                    .unwrap_or_default();
            if !available.split_whitespace().any(|a| a == cc) {
                bail!(
                    "TCP congestion control {cc:?} is not available here (available: {})",
                    available.trim()
                );
            }
        }
        require_root()?;
        if let Some(cc) = congestion {
            allow_congestion(cc)?;
        }
        require_tools(BED_TOOLS)?;
        if let Err(e) = raise_neighbour_limits() {
            // A small bed fits the default table; a large one says why it may fail.
            eprintln!("edge-tests: {e:#}: beds of more than about 30 hosts may lose peers");
        }
        sweep_stale_beds();
        let prefix = format!(
            "pc{}x{}",
            std::process::id(),
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()?;
        let bed = Bed {
            hub: format!("{prefix}-hub"),
            prefix,
            hosts: Mutex::new(Vec::new()),
            procs: Mutex::new(HashMap::new()),
            next_proc: AtomicU32::new(0),
            dir,
            mtu,
            congestion: congestion.map(str::to_owned),
        };
        sh("ip", &["netns", "add", &bed.hub])?;
        sh("ip", &["-n", &bed.hub, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &["-n", &bed.hub, "link", "add", "br0", "type", "bridge"],
        )?;
        sh("ip", &["-n", &bed.hub, "link", "set", "br0", "up"])?;
        Ok(bed)
    }

    /// The hub namespace, which holds every host's port (`h<i>`).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// A temp dir that lives as long as the bed.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh folder under the bed's dir.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let path = self.dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating a folder in the bed's temp dir");
        path
    }

    /// Adds host `name` at `ip`/16 with its upload and download each shaped to `mbit` (0: not
    /// shaped).
    pub fn add_host(&self, name: &str, ip: Ipv4Addr, mbit: u32) -> Result<Host> {
        self.add_host_with(name, ip, Link::symmetric(u64::from(mbit) * 1_000_000))
    }

    /// Adds host `name` at `ip`/16 with its upload and download shaped to `link`'s two rates
    /// (each 0: not shaped).
    pub fn add_host_with(&self, name: &str, ip: Ipv4Addr, link: Link) -> Result<Host> {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let host = Host {
            name: name.to_owned(),
            ns: format!("{}-{name}", self.prefix),
            ip,
            hub_port: format!("h{}", hosts.len() + 1),
        };
        let (ns, hub, port) = (&host.ns, &self.hub, &host.hub_port);
        sh("ip", &["netns", "add", ns])?;
        hosts.push(host.clone());
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        if let Some(cc) = &self.congestion {
            let key = format!("net.ipv4.tcp_congestion_control={cc}");
            sh("ip", &["netns", "exec", ns, "sysctl", "-qw", &key])?;
        }
        sh(
            "ip",
            &[
                "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        sh(
            "ip",
            &["-n", hub, "link", "set", port, "master", "br0", "up"],
        )?;
        sh(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/16"), "dev", "eth0"],
        )?;
        let mtu = self.mtu.to_string();
        sh("ip", &["-n", hub, "link", "set", port, "mtu", &mtu])?;
        sh("ip", &["-n", ns, "link", "set", "eth0", "mtu", &mtu, "up"])?;
        if link.up_bps > 0 {
            shape(ns, "eth0", link.up_bps, self.mtu)?;
        }
        if link.down_bps > 0 {
            shape(hub, port, link.down_bps, self.mtu)?;
        }
        Ok(host)
    }

    /// Gives `host` its own `/etc/hosts`, `entries` (address, names) after localhost:
    /// `ip netns exec` bind-mounts `/etc/netns/<ns>/hosts` over `/etc/hosts` for every process
    /// started in the namespace afterwards, so names resolve there without DNS and without
    /// touching the machine's own file. Removed with the bed.
    pub fn hosts_file(&self, host: &Host, entries: &[(Ipv4Addr, &str)]) -> Result<()> {
        let dir = Path::new("/etc/netns").join(&host.ns);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {names}\n"));
        }
        fs::write(dir.join("hosts"), text)
            .with_context(|| format!("writing {}/hosts", dir.display()))
    }

    /// Runs `program args` inside `host` to completion, killing it after `timeout`.
    pub fn run(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        run_in(host, program, args, timeout)
    }

    /// [`Bed::run`] that fails unless the program exits 0; returns its stdout.
    pub fn run_ok(&self, host: &Host, program: &str, args: &[&str]) -> Result<String> {
        let out = self.run(host, program, args, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` in {} failed ({}): {}",
                args.join(" "),
                host.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET url` from inside `host` (the root namespace cannot reach the bed's addresses).
    pub fn http_get(&self, host: &Host, url: &str) -> Result<String> {
        self.run_ok(host, "curl", &["-sf", "--max-time", "10", url])
    }

    /// Polls `url` from inside `host` until it answers any HTTP status.
    pub fn wait_http(&self, host: &Host, url: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.run(
                host,
                "curl",
                &["-s", "-o", "/dev/null", "--max-time", "2", url],
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{url} did not answer from {} within {READY_TIMEOUT:?}",
                    host.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `program args` inside `host`, logging stdout and stderr to `<dir>/<label>.log`
    /// (appended across restarts). With `ready`, waits until a stdout line starts with it and
    /// returns the rest of that line too.
    pub fn spawn(
        &self,
        host: &Host,
        label: &str,
        program: &str,
        args: &[String],
        ready: Option<&str>,
    ) -> Result<(ProcId, String)> {
        let log_path = self.log_path(label);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {program} in {}", host.name))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let id = ProcId(self.next_proc.fetch_add(1, Ordering::Relaxed));
        self.procs.lock().expect("procs lock").insert(id, child);
        let (tx, rx) = mpsc::channel();
        let prefix = ready.map(str::to_owned);
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(rest) = prefix.as_deref().and_then(|p| line.trim().strip_prefix(p)) {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let Some(prefix) = ready else {
            return Ok((id, String::new()));
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(rest) => Ok((id, rest)),
            Err(e) => {
                self.kill(id);
                bail!(
                    "{label} in {}: `{program} {}` did not print {prefix:?} ({e}); log:\n{}",
                    host.name,
                    args.join(" "),
                    log_tail(&log_path, 4000)
                )
            }
        }
    }

    pub fn log_path(&self, label: &str) -> PathBuf {
        self.dir().join(format!("{label}.log"))
    }

    /// SIGKILL, as when a host dies: no goodbye, sockets reset.
    pub fn kill(&self, id: ProcId) {
        let proc = self.procs.lock().expect("procs lock").remove(&id);
        if let Some(mut child) = proc {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Drops a fraction `probability` of the packets `host` receives (iptables statistic
    /// match; this kernel has no netem).
    pub fn drop_packets(&self, host: &Host, probability: f64) -> Result<()> {
        let p = probability.to_string();
        for chain in ["INPUT", "OUTPUT"] {
            self.run_ok(
                host,
                "iptables",
                &[
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// `tc -s qdisc show` of `host`'s port in the hub: the queue that shapes its download.
    pub fn download_qdisc(&self, host: &Host) -> Result<String> {
        let out = Command::new("tc")
            .args([
                "-n",
                &self.hub,
                "-s",
                "qdisc",
                "show",
                "dev",
                &host.hub_port,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running tc")?;
        if !out.status.success() {
            bail!(
                "`tc -s qdisc show dev {}` failed: {}",
                host.hub_port,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a counting rule: bytes `host` receives from `source` (an address or CIDR).
    pub fn count_from(&self, host: &Host, source: &str) -> Result<()> {
        self.run_ok(host, "iptables", &["-A", "INPUT", "-s", source])?;
        Ok(())
    }

    /// Bytes counted by [`Bed::count_from`] rules of `host`.
    pub fn counted_bytes(&self, host: &Host) -> Result<u64> {
        let out = self.run_ok(host, "iptables", &["-L", "INPUT", "-v", "-n", "-x"])?;
        Ok(out
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum())
    }

    fn print_logs(&self) {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                eprintln!("--- {} ---\n{}", path.display(), log_tail(&path, 3000));
            }
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // `EDGE_TESTS_KEEP_LOGS=DIR` keeps every process's log (the bed's folder goes).
        if let Some(keep) = std::env::var_os("EDGE_TESTS_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = fs::create_dir_all(&keep);
            for entry in fs::read_dir(self.dir()).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let _ = fs::copy(&path, keep.join(entry.file_name()));
                }
            }
        }
        let procs: Vec<Child> = self
            .procs
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for mut child in procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        let hosts = self.hosts.lock().map(|h| h.clone()).unwrap_or_default();
        let mut names: Vec<String> = hosts.into_iter().map(|h| h.ns).collect();
        names.push(self.hub.clone());
        for ns in names {
            delete_namespace(&ns);
        }
    }
}

/// Kills whatever still runs in `ns` (children of our children) and deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    // A hosts file given with `Bed::hosts_file`.
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// Namespaces of beds whose process is gone (killed by a test runner's timeout, say): ours by
/// name (`pc<pid>x<n>-...`), so they are removed.
fn sweep_stale_beds() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pc")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, rest)| rest.contains('-').then_some(pid))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}

/// `tc tbf` at `bps` bits per second on `dev` inside `ns`: a burst of 10 ms at the rate (at
/// least 16 KiB and two packets of `mtu`), 50 ms of queue.
fn shape(ns: &str, dev: &str, bps: u64, mtu: u32) -> Result<()> {
    let burst = (bps / 8 / 100).max(16 * 1024).max(2 * u64::from(mtu));
    sh(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{bps}bit"),
            "burst",
            &burst.to_string(),
            "latency",
            "50ms",
        ],
    )
}

/// Runs a setup command; fails with its stderr.
fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace may only select an algorithm the host allows
/// (`net.ipv4.tcp_allowed_congestion_control`, one list for every namespace); a machine may
/// offer `cubic` without allowing it (`reno bbr` on some cloud images), and then every host's
/// `sysctl` fails with "Operation not permitted". Root adds `cc` to the list, keeping the rest.
fn allow_congestion(cc: &str) -> Result<()> {
    const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
    let allowed = fs::read_to_string(ALLOWED).unwrap_or_default();
    if allowed.split_whitespace().any(|a| a == cc) {
        return Ok(());
    }
    let list = format!("{} {cc}", allowed.trim());
    fs::write(ALLOWED, list.trim()).map_err(|e| {
        anyhow!(
            "TCP congestion control {cc:?} is available but not allowed in network namespaces \
             ({ALLOWED}: {}), and adding it failed: {e}",
            allowed.trim()
        )
    })?;
    eprintln!("edge-tests: allowed TCP congestion control {cc} in network namespaces ({ALLOWED})");
    Ok(())
}

/// The kernel's neighbour (ARP) table is one for all network namespaces, and its limits
/// (`net.ipv4.neigh.default.gc_thresh2` and `3`, 512 and 1,024 by default) exist only in the
/// machine's own namespace. A bed of N hosts where every host talks to every other needs about
/// N² entries: at 32 nodes (1,190) the table overflowed, and the host that came last could
/// resolve no peer at all (`neighbour: arp_cache: neighbor table overflow!` in the kernel log,
/// its peer connections timing out while the mirror, resolved earlier, still answered). So
/// the soft and hard limits are raised to what a bed of 200 hosts, and a few beds at once,
/// need; never lowered. They stay raised after the bed (an ARP table's limit, harmless to
/// leave). Where `/proc/sys` cannot be written the bed still builds, with a warning.
fn raise_neighbour_limits() -> Result<()> {
    for (knob, least) in [("gc_thresh2", 65_536u64), ("gc_thresh3", 131_072)] {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{knob}");
        let now: u64 = fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if now < least {
            fs::write(&path, least.to_string()).with_context(|| {
                format!(
                    "raising {path} from {now} to {least} (the ARP table all the bed's \
                     namespaces share would overflow)"
                )
            })?;
        }
    }
    Ok(())
}

pub fn require_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        bail!(
            "edge-tests create network namespaces and must run as root (uid is {uid}); \
             run them with scripts/test.sh as root"
        );
    }
    Ok(())
}

/// Fails naming every missing tool and how to get it. The bed never skips silently.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "edge-tests need {} (not installed); scripts/test.sh installs them \
             (apt-get install iproute2 iptables curl skopeo docker-registry aria2 opentracker \
             mktorrent)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Runs `program args` inside `host` to completion, killing it after `timeout`; for threads
/// that must not hold the bed (it has to drop, and clean up, when a test panics).
pub fn run_in(host: &Host, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.ns, program]).args(args);
    run_with_timeout(&mut cmd, timeout)
        .with_context(|| format!("{program} {} in {}", args.join(" "), host.name))
}

/// Runs `cmd`, capturing its output, and kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// The last `max` bytes of a log file.
pub fn log_tail(path: &Path, max: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}
