//! poolcast's runs: a mirror on the mirror's host (cold, or warm: already holding the payload),
//! a scheduler (p2p) and a fresh agent in every node; every node starts its client at once
//! against its own agent, `curl` for the blob or `skopeo copy` for the image, and is timed
//! until the client exits; the copy is verified afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{anyhow, Result};

use super::report::Outcome;
use super::setup::{Payload, Setup, BLOB_REPO, IMAGE_REPO, IMAGE_TAG};
use super::Knobs;
use crate::bed::{run_in, Host, ProcId};
use crate::image::sha256_file;
use crate::parts::{self, AgentSpec, AGENT_PORT, MIRROR_PORT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing cached anywhere: the mirror fetches from the origin while it serves the pool.
    P2pCold,
    /// The mirror already holds the payload; agents start empty. Tells the cold mirror's share
    /// of the time from the P2P protocol's.
    P2pWarmMirror,
    /// No scheduler: every node takes a whole copy from a cold mirror.
    Source,
}

/// Mirror caches a cold p2p run filled, by payload, for the warm runs after it.
pub type WarmCaches = HashMap<Payload, PathBuf>;

pub fn run(
    s: &Setup,
    knobs: &Knobs,
    payload: Payload,
    mode: Mode,
    label: &'static str,
    warm: &mut WarmCaches,
) -> Result<Outcome> {
    eprintln!("fanout: {label}");
    let bed = &s.bed;
    let tag = format!(
        "{}-{}",
        match mode {
            Mode::P2pCold => "p2p",
            Mode::P2pWarmMirror => "p2p-warm",
            Mode::Source => "source",
        },
        match payload {
            Payload::Blob => "blob",
            Payload::Image => "image",
        }
    );
    let (mirror_cache, prefetch) = match (mode, warm.get(&payload)) {
        (Mode::P2pWarmMirror, Some(cache)) => (cache.clone(), false),
        (Mode::P2pWarmMirror, None) => (bed.fresh_dir(&format!("mirror-{tag}")), true),
        _ => (bed.fresh_dir(&format!("mirror-{tag}")), false),
    };
    let mut procs: Vec<ProcId> = vec![parts::start_mirror_with(
        bed,
        &s.mirror,
        &s.origin,
        &mirror_cache,
        &knobs.mirror_args,
    )?];
    let outcome = (|| {
        if prefetch {
            warm_mirror(s, payload)?;
        }
        let p2p = mode != Mode::Source;
        if p2p {
            procs.push(parts::start_scheduler(bed, &s.scheduler, None)?);
        }
        let spec = AgentSpec {
            mirror: s.mirror.clone(),
            scheduler: p2p.then(|| s.scheduler.clone()),
            pool: "bench".into(),
            blocksize: knobs.blocksize.clone(),
            extra: knobs.agent_args.clone(),
        };
        for node in &s.nodes {
            let cache = bed.fresh_dir(&format!("{}-{tag}-cache", node.name));
            procs.push(parts::start_agent(bed, node, &spec, &cache)?);
        }
        pull_everywhere(s, payload, &tag, label)
    })();
    for id in procs {
        bed.kill(id);
    }
    // The agents' copies go with their runs: 32 nodes of a large image fill a disk fast.
    for node in &s.nodes {
        let _ = std::fs::remove_dir_all(bed.dir().join(format!("{}-{tag}-cache", node.name)));
    }
    if mode == Mode::P2pCold {
        warm.insert(payload, mirror_cache);
    } else if mode == Mode::Source || prefetch {
        let _ = std::fs::remove_dir_all(&mirror_cache);
    }
    outcome
}

/// Starts every node's client at once and times each until it exits; then verifies each copy.
fn pull_everywhere(s: &Setup, payload: Payload, tag: &str, label: &str) -> Result<Outcome> {
    let bed = &s.bed;
    let size = s.size(payload)?;
    let timeout = s.pull_timeout(size);
    let (origin0, mirror0) = (s.tx_bytes(&s.origin)?, s.tx_bytes(&s.mirror)?);
    let tcp0 = (s.tcp_segments(&s.mirror)?, s.tcp_segments(&s.origin)?);
    let down_drops0 = s.download_drops()?;
    let mirror_log0 = std::fs::metadata(bed.log_path("mirror")).map_or(0, |m| m.len());
    let samplers = [
        ("mirror", Sampler::start(&s.mirror)),
        ("origin", Sampler::start(&s.origin)),
    ];
    let cpu = CpuSampler::start();
    let down = DownSampler::start(s);
    let start = super::now();
    let pulls: Vec<_> = s
        .nodes
        .iter()
        .map(|node| {
            let out = bed.dir().join(format!("{}-{tag}.out", node.name));
            let (program, args) = client(s, payload, node, &out)?;
            let node = node.clone();
            Ok(std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = run_in(&node, program, &args, timeout);
                (r, super::now(), out)
            }))
        })
        .collect::<Result<_>>()?;
    // Every pull ends before any copy is checked: hashing a finished node's copy would take
    // the cores from the nodes still pulling.
    let mut ended = Vec::new();
    for pull in pulls {
        ended.push(pull.join().map_err(|_| anyhow!("pull thread panicked"))?);
    }
    let mut times = Vec::new();
    let mut each = Vec::new();
    for ((r, done, out), node) in ended.into_iter().zip(&s.nodes) {
        let secs = done - start;
        match check(s, payload, r, &out) {
            Ok(()) => {
                times.push(secs);
                each.push(format!("{} {secs:.2}", node.name));
            }
            Err(e) => eprintln!(
                "fanout: {label}: {} did NOT get a verified copy after {secs:.1} s: {e:#}",
                node.name
            ),
        }
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&out);
    }
    // Which node was last, and how far behind the rest (unequal links: is it the thinnest?).
    eprintln!(
        "fanout: {label}: each node done after (s): {}",
        each.join(", ")
    );
    diagnose(s, label, size, tcp0, mirror_log0);
    if let Ok(drops) = s.download_drops() {
        eprintln!(
            "fanout: {label}: the nodes' download queues dropped {} packets",
            drops - down_drops0
        );
    }
    for (host, sampler) in samplers {
        if let Some(sampler) = sampler {
            sampler.report(label, host, s.links.mirror.bytes_per_sec());
        }
    }
    if let Some(down) = down {
        down.report(s, label);
    }
    if let Some(cpu) = cpu {
        cpu.report(label);
    }
    Ok(Outcome {
        label: label.to_owned(),
        payload,
        times,
        origin_sent: s.tx_bytes(&s.origin)? - origin0,
        source_sent: s.tx_bytes(&s.mirror)? - mirror0,
    })
}

/// Prints to stderr what tells a slow run's cause: the mirror's and the origin's TCP segments
/// sent and retransmitted during it (and why), what their `eth0` queue dropped, what the
/// mirror took from upstream and handed to its sockets (bytes, and blobs fetched ahead; its
/// log's warnings when it took more than `size`), and the pieces the agents took from the
/// mirror, by why.
fn diagnose(
    s: &Setup,
    label: &str,
    size: u64,
    tcp0: (super::setup::TcpCounts, super::setup::TcpCounts),
    mirror_log0: u64,
) {
    for (name, host, before) in [("mirror", &s.mirror, tcp0.0), ("origin", &s.origin, tcp0.1)] {
        if let Ok(tcp) = s.tcp_segments(host) {
            let out = tcp.sent - before.sent;
            let retrans = tcp.retransmitted - before.retransmitted;
            let accepted = tcp.accepted - before.accepted;
            eprintln!(
                "fanout: {label}: {name} TCP segments sent {out}, retransmitted {retrans} ({:.1} %; \
                 needless by duplicate SACKs {}, tail loss probes {}, timeouts {}); \
                 eth0 queue dropped {}; connections accepted {accepted}",
                100.0 * retrans as f64 / out.max(1) as f64,
                tcp.dsack_received - before.dsack_received,
                tcp.loss_probes - before.loss_probes,
                tcp.timeouts - before.timeouts,
                tcp.queue_drops - before.queue_drops,
            );
        }
    }
    // The mirror started with this run: its counters are the run's.
    if let Some(node) = s.nodes.first() {
        let url = format!("http://{}:{MIRROR_PORT}/metrics", s.mirror.ip);
        if let Ok(text) = s.bed.http_get(node, &url) {
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(name)?
                            .strip_prefix(' ')?
                            .trim()
                            .parse::<f64>()
                            .ok()
                    })
                    .unwrap_or(0.0)
            };
            let upstream = value("poolcast_mirror_upstream_bytes_total");
            eprintln!(
                "fanout: {label}: mirror took {:.1} MiB from upstream, handed {:.1} MiB to its clients' sockets, {} blobs fetched ahead",
                upstream / (1024.0 * 1024.0),
                value("poolcast_mirror_served_bytes_total") / (1024.0 * 1024.0),
                value("poolcast_mirror_blobs_fetched_ahead_total")
            );
            eprintln!(
                "fanout: {label}: mirror answered {} piece-digest requests, {:.2} MiB of bodies",
                value("poolcast_mirror_piece_lists_total"),
                value("poolcast_mirror_piece_list_bytes_total") / (1024.0 * 1024.0),
            );
            if upstream > size as f64 + 1024.0 * 1024.0 {
                mirror_warnings(s, label, mirror_log0);
            }
        }
    }
    let mut by_why: std::collections::BTreeMap<String, f64> = Default::default();
    let mut peer_in = 0.0;
    let mut from_mirror = 0.0;
    let mut ranges: std::collections::BTreeMap<String, f64> = Default::default();
    for node in &s.nodes {
        let url = format!("http://{}:{AGENT_PORT}/metrics", node.ip);
        let Ok(text) = s.bed.http_get(node, &url) else {
            continue;
        };
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("poolcast_agent_peer_bytes_total{direction=\"in\"} ")
            {
                peer_in += n.trim().parse().unwrap_or(0.0);
            }
            if let Some(n) = line.strip_prefix("poolcast_agent_source_bytes_total ") {
                from_mirror += n.trim().parse().unwrap_or(0.0);
            }
            if let Some(rest) = line.strip_prefix("poolcast_agent_mirror_ranges_total{reason=\"") {
                if let Some((labels, value)) = rest.split_once("\"} ") {
                    let key = labels.replace("\",outcome=\"", " ");
                    *ranges.entry(key).or_default() += value.parse().unwrap_or(0.0);
                }
            }
            if let Some(n) = line.strip_prefix("poolcast_agent_blobs_started_ahead_total ") {
                *by_why.entry("(blobs started ahead)".into()).or_default() +=
                    n.trim().parse().unwrap_or(0.0);
            }
            let Some(rest) = line.strip_prefix("poolcast_agent_mirror_pieces_total{reason=\"")
            else {
                continue;
            };
            if let Some((why, value)) = rest.split_once("\"} ") {
                *by_why.entry(why.to_owned()).or_default() += value.parse().unwrap_or(0.0);
            }
        }
    }
    if peer_in > 0.0 {
        // Each node needs S once; what peers sent beyond N*S less the mirror's pieces is
        // pieces received twice or cut off (cancelled in the endgame, stalled, refused).
        eprintln!(
            "fanout: {label}: peers sent each other {:.1} MiB ({:.2} copies of S for {} nodes)",
            peer_in / (1024.0 * 1024.0),
            peer_in / size as f64,
            s.nodes.len()
        );
    }
    if !by_why.is_empty() {
        // Bytes of mirror ranges that reached the agents, whole pieces or not: beside the
        // mirror's "handed to its sockets", it tells bytes lost with a cancelled range from
        // bytes the agents took and threw away.
        let ended: Vec<String> = ranges.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!(
            "fanout: {label}: agents took {:.1} MiB from mirror ranges (ranges by why and end: {})",
            from_mirror / (1024.0 * 1024.0),
            ended.join(", ")
        );
        let parts: Vec<String> = by_why.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!(
            "fanout: {label}: pieces from the mirror: {}",
            parts.join(", ")
        );
    }
}

/// The mirror took more than the payload from upstream, which it must not: prints the
/// warnings and errors in its log (a failed ingest that was started again is the first
/// suspect), so a rare run says why while it is still on screen.
fn mirror_warnings(s: &Setup, label: &str, from: u64) {
    let log = std::fs::read(s.bed.log_path("mirror")).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
    let log = String::from_utf8_lossy(&log[start..]);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    eprintln!(
        "fanout: {label}: the mirror took more than one copy from upstream; its log's {} warnings and errors during the run (last 40):",
        lines.len()
    );
    for line in lines.iter().skip(lines.len().saturating_sub(40)) {
        eprintln!("  {line}");
    }
}

/// A shell loop printing what `command` prints every [`SAMPLE_EVERY`] seconds, run by
/// `program` (`sh` itself, or `ip netns exec NS sh`) until stopped. Each command prints a
/// line `@UPTIME` (seconds, `/proc/uptime`) and then its sample, read by the same process
/// ([`timed`]): a loop round takes longer than [`SAMPLE_EVERY`] when the cores are busy, and
/// starting a process may wait, so figures per second divide by the time the samples say.
/// It prints into a file, not a pipe: a pipe nobody reads until the end fills and stops it.
struct Loop(std::process::Child, tempfile::NamedTempFile);

const SAMPLE_EVERY: f64 = 0.5;

impl Loop {
    fn start(program: &[&str], command: &str) -> Option<Loop> {
        let script = format!("while :; do {command}; sleep {SAMPLE_EVERY}; done");
        let (first, rest) = program.split_first()?;
        let out = tempfile::NamedTempFile::new().ok()?;
        std::process::Command::new(first)
            .args(rest)
            .args(["-c", &script])
            .stdout(out.reopen().ok()?)
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
            .map(|child| Loop(child, out))
    }

    /// Stops the loop; its samples in order: when (seconds of uptime) and what was printed.
    fn stop(mut self) -> Vec<(f64, String)> {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let text = std::fs::read_to_string(self.1.path()).unwrap_or_default();
        samples(&text)
    }
}

/// An awk program run over `/proc/uptime` and then `files`: prints `@UPTIME`, then what
/// `program` prints for the files' lines (awk's `NR > 1`).
fn timed(program: &str, files: &str) -> String {
    format!("awk 'NR == 1 {{ print \"@\" $1; next }} {program}' /proc/uptime {files}")
}

/// `@T` lines and what follows each, up to the next: one sample per `@T`.
fn samples(text: &str) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('@') {
            if let Ok(t) = t.trim().parse() {
                out.push((t, String::new()));
                continue;
            }
        }
        if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    // The last sample may have been cut off by the kill.
    out.pop();
    out
}

/// Timed samples (as [`Loop::stop`] gives them) cut into consecutive stretches of about a
/// second (at least 7/8 of one, as samples come every half second or later): for each, the
/// earlier and later sample's index and the seconds between them.
fn seconds<T>(got: &[(f64, T)]) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    let mut from = 0;
    for to in 1..got.len() {
        let dt = got[to].0 - got[from].0;
        if dt >= 1.0 - SAMPLE_EVERY / 4.0 {
            out.push((from, to, dt));
            from = to;
        }
    }
    out
}

/// A host's `eth0` sent bytes, headers included ([`super::setup::WIRE_BYTES`]), every half
/// second, read by a shell loop in its namespace: how busy its uplink was over the run (the
/// bound needs it busy from start to end).
struct Sampler(Loop);

impl Sampler {
    fn start(host: &Host) -> Option<Sampler> {
        let command = format!("{}; {}", timed("{ print }", ""), super::setup::WIRE_BYTES);
        Loop::start(&["ip", "netns", "exec", &host.ns, "sh"], &command).map(Sampler)
    }

    /// Prints the uplink's use per second, as a fraction of its rate.
    fn report(self, label: &str, host: &str, rate: f64) {
        let got: Vec<(f64, f64)> = self
            .0
            .stop()
            .into_iter()
            .filter_map(|(t, body)| Some((t, body.trim().parse().ok()?)))
            .collect();
        let used: Vec<String> = seconds(&got)
            .into_iter()
            .map(|(a, b, dt)| format!("{:.2}", (got[b].1 - got[a].1) / dt / rate))
            .collect();
        eprintln!(
            "fanout: {label}: {host} uplink use per second: {}",
            used.join(" ")
        );
    }
}

/// Every port's sent bytes in the hub every half second, headers included (its `tbf` queue's
/// count, as [`super::setup::WIRE_BYTES`] says why): what each node downloaded, so a slow end
/// shows whether the nodes' downlinks were full (the bound on equal links needs them full from
/// start to end) or waited.
struct DownSampler(Loop);

impl DownSampler {
    fn start(s: &Setup) -> Option<DownSampler> {
        // PORT=SENT for every port's tbf queue.
        let command = format!(
            "{}; tc -s qdisc show | {}",
            timed("{ print }", ""),
            r#"awk '$1 == "qdisc" { dev = ($2 == "tbf") ? $5 : "" } $1 == "Sent" && dev ~ /^h[0-9]+$/ { printf "%s=%s ", dev, $2 } END { print "" }'"#
        );
        Loop::start(&["ip", "netns", "exec", s.bed.hub(), "sh"], &command).map(DownSampler)
    }

    /// Prints, per second, the nodes' downlinks' use (all nodes' bytes against all their
    /// rates) and, in brackets, the least used node's.
    fn report(self, s: &Setup, label: &str) {
        let ports: Vec<&str> = s.nodes.iter().map(Host::hub_port).collect();
        let got: Vec<(f64, Vec<f64>)> = self
            .0
            .stop()
            .into_iter()
            .map(|(t, body)| (t, port_bytes(&body, &ports)))
            .filter(|(_, v)| v.iter().all(|b| b.is_finite()))
            .collect();
        let rates: Vec<f64> = s
            .links
            .node_down
            .iter()
            .map(|r| r.bytes_per_sec())
            .collect();
        let used: Vec<String> = seconds(&got)
            .into_iter()
            .map(|(a, b, dt)| {
                let moved: Vec<f64> = (0..ports.len())
                    .map(|i| got[b].1[i] - got[a].1[i])
                    .collect();
                let all = moved.iter().sum::<f64>() / dt / rates.iter().sum::<f64>();
                let least = (0..ports.len())
                    .map(|i| moved[i] / dt / rates[i])
                    .fold(f64::INFINITY, f64::min);
                format!("{all:.2}({least:.2})")
            })
            .collect();
        eprintln!(
            "fanout: {label}: nodes' downlink use per second, all (least used): {}",
            used.join(" ")
        );
    }
}

/// `PORT=BYTES ...` of one sample, in `ports`' order (NaN for a port not in it).
fn port_bytes(line: &str, ports: &[&str]) -> Vec<f64> {
    let mut sent = vec![f64::NAN; ports.len()];
    for pair in line.split_whitespace() {
        if let Some((port, bytes)) = pair.split_once('=') {
            if let Some(i) = ports.iter().position(|p| *p == port) {
                sent[i] = bytes.parse().unwrap_or(f64::NAN);
            }
        }
    }
    sent
}

/// The machine's `cpu` line of `/proc/stat` every half second (the same in every namespace):
/// whether a slow second waited for the two cores rather than the links, and how much of
/// them the hypervisor took (steal).
struct CpuSampler(Loop);

impl CpuSampler {
    fn start() -> Option<CpuSampler> {
        Loop::start(&["sh"], &timed("FNR == 1 { print }", "/proc/stat")).map(CpuSampler)
    }

    /// Prints, per second, the share of all cores busy and (in brackets) stolen.
    fn report(self, label: &str) {
        let got: Vec<(f64, Vec<f64>)> = self
            .0
            .stop()
            .into_iter()
            .filter_map(|(t, body)| {
                let v: Vec<f64> = body
                    .strip_prefix("cpu ")?
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                (v.len() >= 8).then_some((t, v))
            })
            .collect();
        let shares: Vec<String> = seconds(&got)
            .into_iter()
            .map(|(a, b, _)| {
                let d: Vec<f64> = (0..8).map(|k| got[b].1[k] - got[a].1[k]).collect();
                let total: f64 = d.iter().sum::<f64>().max(1.0);
                // user nice system idle iowait irq softirq steal
                let busy = 1.0 - (d[3] + d[4]) / total;
                format!("{busy:.2}({:.2})", d[7] / total)
            })
            .collect();
        eprintln!(
            "fanout: {label}: CPU busy per second, all cores (stolen): {}",
            shares.join(" ")
        );
    }
}

/// The command a node runs: curl of the blob by digest, or skopeo of the image by tag, both
/// straight at the node's own agent (the direct form, no hosts.toml).
fn client(
    s: &Setup,
    payload: Payload,
    node: &Host,
    out: &Path,
) -> Result<(&'static str, Vec<String>)> {
    let agent = format!("{}:{AGENT_PORT}", node.ip);
    Ok(match payload {
        Payload::Blob => {
            let url = format!("http://{agent}/v2/{BLOB_REPO}/blobs/{}", s.blob()?.digest);
            let out = out.display().to_string();
            (
                "curl",
                ["-sSf", "-o", &out, &url].map(String::from).to_vec(),
            )
        }
        Payload::Image => {
            let source = format!("{agent}/{IMAGE_REPO}:{IMAGE_TAG}");
            (
                "skopeo",
                testkit::image::skopeo_pull_args(&source, out, None),
            )
        }
    })
}

fn check(s: &Setup, payload: Payload, r: Result<Output>, out: &Path) -> Result<()> {
    let output = r?;
    if !output.status.success() {
        return Err(anyhow!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    match payload {
        Payload::Blob => {
            let want = s.blob()?.digest.trim_start_matches("sha256:");
            let got = sha256_file(out)?;
            (got == want)
                .then_some(())
                .ok_or_else(|| anyhow!("the copy hashes to sha256:{got}"))
        }
        Payload::Image => s.image()?.verify(out),
    }
}

/// Fills a fresh mirror with the payload by fetching it through the mirror from the mirror's
/// own namespace (the origin's link carries it once, as in the cold run).
fn warm_mirror(s: &Setup, payload: Payload) -> Result<()> {
    eprintln!("fanout: warming the mirror");
    let base = format!("http://{}:{MIRROR_PORT}/v2", s.mirror.ip);
    let mut urls = Vec::new();
    match payload {
        Payload::Blob => urls.push(format!("{base}/{BLOB_REPO}/blobs/{}", s.blob()?.digest)),
        Payload::Image => {
            let image = s.image()?;
            urls.push(format!("{base}/{IMAGE_REPO}/manifests/{IMAGE_TAG}"));
            for blob in image.blobs() {
                urls.push(format!("{base}/{IMAGE_REPO}/blobs/{}", blob.digest));
            }
        }
    }
    let accept = format!("Accept: {}", testkit::image::MANIFEST_TYPE);
    let timeout = s.pull_timeout(s.size(payload)?);
    for url in urls {
        let args = ["-sSf", "-o", "/dev/null", "-H", &accept, &url];
        let out = s.bed.run(&s.mirror, "curl", &args, timeout)?;
        if !out.status.success() {
            return Err(anyhow!(
                "warming the mirror: {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_timed_by_the_clock_not_by_their_count() {
        // Three whole samples and one cut off by the kill; the rounds took 0.5, 1.1 and 0.6 s.
        let text =
            "@100.00\nh1=10 h2=20 \n@100.50\nh1=15 h2=30 \n@101.60\nh2=40 h1=30 \n@102.20\nh1=";
        let got = samples(text);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], (100.5, "h1=15 h2=30 \n".to_owned()));
        // 100.0 -> 100.5 is under a second: the first second ends at 101.6 and spans 1.6 s.
        let secs = seconds(&got);
        assert_eq!(secs.len(), 1);
        assert_eq!((secs[0].0, secs[0].1), (0, 2));
        assert!((secs[0].2 - 1.6).abs() < 1e-9);
        assert_eq!(port_bytes(&got[2].1, &["h1", "h2"]), vec![30.0, 40.0]);
        assert!(port_bytes(&got[2].1, &["h3"])[0].is_nan());
        assert!(samples("").is_empty());
    }
}
