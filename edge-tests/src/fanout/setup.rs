//! One bed for every method of a run: the origin, mirror and scheduler hosts on the mirror's
//! link, the nodes on theirs, and what the methods move, pushed to the origin registry once:
//! a random blob (`bench/blob`) and a multi-layer image (`bench/image:v1`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::links::Links;
use crate::bed::{Bed, Host};
use crate::image::{self, random_bytes, sha256_file, TestImage};
use crate::parts::{self, REGISTRY_PORT};

pub const BLOB_REPO: &str = "bench/blob";
pub const IMAGE_REPO: &str = "bench/image";
pub const IMAGE_TAG: &str = "v1";

/// What a method moves to every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// One blob, fetched by digest (curl, or a single-file torrent).
    Blob,
    /// The image: manifest, config and layers (skopeo, or a multi-file torrent of its blobs).
    Image,
}

pub struct Blob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// A shell command printing the bytes `eth0` has sent, frames' headers included: its `tbf`
/// queue's count, which charges each segment of an offloaded batch (TSO/GSO) its own headers,
/// as the link does. The interface's `tx_bytes` counts one set of headers per batch: 4 % short
/// at MTU 1500 (a link measured 0.96 busy that was 1.00 busy), 0.1 % at 9000. A host with
/// no `tbf` (unshaped) falls back to `tx_bytes`.
pub const WIRE_BYTES: &str = "q=$(tc -s qdisc show dev eth0 | awk '$1 == \"qdisc\" { tbf = ($2 == \"tbf\") } tbf && $1 == \"Sent\" { print $2; exit }'); [ -n \"$q\" ] || q=$(cat /sys/class/net/eth0/statistics/tx_bytes); echo \"$q\"";

pub struct Setup {
    pub bed: Bed,
    pub origin: Host,
    pub mirror: Host,
    pub scheduler: Host,
    pub nodes: Vec<Host>,
    pub links: Links,
    pub blob: Option<Blob>,
    pub image: Option<TestImage>,
}

impl Setup {
    /// The bed with every host shaped, the origin registry holding the payloads asked for.
    pub fn build(
        links: Links,
        mtu: u32,
        congestion: Option<&str>,
        size: u64,
        layers: u16,
        payloads: &[Payload],
    ) -> Result<Setup> {
        let bed = Bed::with_options(mtu, congestion)?;
        let at = |last: u8| Ipv4Addr::new(10, 77, 0, last);
        let origin = bed.add_host_with("origin", at(2), links.mirror_link())?;
        let mirror = bed.add_host_with("mirror", at(3), links.mirror_link())?;
        let scheduler = bed.add_host_with("scheduler", at(4), links.mirror_link())?;
        let nodes = (1..=links.node_up.len())
            .map(|i| {
                let ip = Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, (i % 250) as u8 + 1);
                bed.add_host_with(&format!("n{i}"), ip, links.node(i - 1))
            })
            .collect::<Result<Vec<_>>>()?;
        eprintln!(
            "fanout: bed of {} nodes up ({})",
            nodes.len(),
            links.describe()
        );
        parts::start_registry(&bed, &origin, &bed.fresh_dir("registry"))?;
        let blob = if payloads.contains(&Payload::Blob) {
            eprintln!("fanout: pushing a {} MiB blob", size >> 20);
            let path = bed.fresh_dir("seed").join("blob");
            std::fs::write(&path, random_bytes(size as usize, 0xfa40))?;
            let digest = format!("sha256:{}", sha256_file(&path)?);
            upload_blob(&bed, &origin, &path, &digest)?;
            Some(Blob { path, digest, size })
        } else {
            None
        };
        let image = if payloads.contains(&Payload::Image) {
            let sizes = layer_sizes(size, layers);
            eprintln!("fanout: pushing an image of {layers} layers ({sizes:?} bytes)");
            let image = TestImage::build(&bed.fresh_dir("image"), &sizes, 0xfa41)?;
            image::push(&image, &bed, &origin, &format!("{IMAGE_REPO}:{IMAGE_TAG}"))?;
            Some(image)
        } else {
            None
        };
        Ok(Setup {
            bed,
            origin,
            mirror,
            scheduler,
            nodes,
            links,
            blob,
            image,
        })
    }

    pub fn blob(&self) -> Result<&Blob> {
        self.blob
            .as_ref()
            .context("no blob was pushed for this run")
    }

    pub fn image(&self) -> Result<&TestImage> {
        self.image
            .as_ref()
            .context("no image was pushed for this run")
    }

    /// Bytes every node must receive: the blob, or the image's blobs (config and layers; the
    /// manifest is a few hundred bytes and not counted).
    pub fn size(&self, payload: Payload) -> Result<u64> {
        Ok(match payload {
            Payload::Blob => self.blob()?.size,
            Payload::Image => self.image()?.total_blob_bytes(),
        })
    }

    /// Bytes that have left `host`'s `eth0`, every frame's headers included: what its
    /// shaping queue sent ([`WIRE_BYTES`]).
    pub fn tx_bytes(&self, host: &Host) -> Result<u64> {
        let out = self.bed.run_ok(host, "sh", &["-c", WIRE_BYTES])?;
        out.trim().parse().context("sent bytes")
    }

    /// TCP segments `host` has sent and retransmitted, connections it accepted
    /// (`/proc/net/snmp` of its namespace), what told it a retransmission was needless or
    /// why it sent one (`TcpExt` of `/proc/net/netstat`), and the packets its `eth0` queue
    /// dropped (`tc -s qdisc`).
    pub fn tcp_segments(&self, host: &Host) -> Result<TcpCounts> {
        let snmp = self.bed.run_ok(host, "cat", &["/proc/net/snmp"])?;
        let netstat = self.bed.run_ok(host, "cat", &["/proc/net/netstat"])?;
        let tcp = proc_fields(&snmp, "Tcp:")?;
        let ext = proc_fields(&netstat, "TcpExt:")?;
        let field = |table: &[(String, u64)], name: &str| -> Result<u64> {
            table
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| anyhow!("no {name} in /proc/net"))
        };
        let qdisc = self
            .bed
            .run_ok(host, "tc", &["-s", "qdisc", "show", "dev", "eth0"])?;
        Ok(TcpCounts {
            sent: field(&tcp, "OutSegs")?,
            retransmitted: field(&tcp, "RetransSegs")?,
            accepted: field(&tcp, "PassiveOpens")?,
            dsack_received: field(&ext, "TCPDSACKRecv")?,
            loss_probes: field(&ext, "TCPLossProbes")?,
            timeouts: field(&ext, "TCPTimeouts")?,
            queue_drops: qdisc_drops(&qdisc),
        })
    }

    /// Packets dropped by the queues that shape the nodes' downloads, all nodes together.
    pub fn download_drops(&self) -> Result<u64> {
        let mut drops = 0;
        for node in &self.nodes {
            drops += qdisc_drops(&self.bed.download_qdisc(node)?);
        }
        Ok(drops)
    }

    /// How long any one node's pull may take: source mode sends every node a whole copy over
    /// the mirror's link, three times that and ten minutes more.
    pub fn pull_timeout(&self, size: u64) -> Duration {
        let source_mode = self.nodes.len() as f64 * size as f64 / self.links.mirror.bytes_per_sec();
        Duration::from_secs_f64(600.0 + 3.0 * source_mode)
    }
}

/// The layers' file sizes: `total` bytes split `layers` ways unequally, as real images are
/// (a large base, smaller layers on top): layer i of n weighs n-i, so 6 layers take 6/21,
/// 5/21, ..., 1/21; the first takes the rounding.
pub fn layer_sizes(total: u64, layers: u16) -> Vec<usize> {
    let n = u64::from(layers.max(1));
    let weights = n * (n + 1) / 2;
    let mut sizes: Vec<u64> = (0..n).map(|i| total * (n - i) / weights).collect();
    sizes[0] += total - sizes.iter().sum::<u64>();
    sizes.into_iter().map(|s| s as usize).collect()
}

/// Monolithic upload of `blob` to the origin's registry as `bench/blob`, from its own namespace.
fn upload_blob(bed: &Bed, origin: &Host, blob: &Path, digest: &str) -> Result<()> {
    let script = format!(
        "set -e; loc=$(curl -sf -D - -o /dev/null -X POST http://127.0.0.1:{REGISTRY_PORT}/v2/{BLOB_REPO}/blobs/uploads/ \
         | tr -d '\\r' | awk -F': ' 'tolower($1)==\"location\"{{print $2}}'); \
         case \"$loc\" in http*) ;; *) loc=\"http://127.0.0.1:{REGISTRY_PORT}$loc\";; esac; \
         case \"$loc\" in *\\?*) sep='&';; *) sep='?';; esac; \
         curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T {} \"$loc${{sep}}digest={digest}\" -o /dev/null",
        blob.display()
    );
    bed.run_ok(origin, "sh", &["-c", &script])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_unequal_and_total_the_size() {
        let sizes = layer_sizes(128 << 20, 6);
        assert_eq!(sizes.len(), 6);
        assert_eq!(sizes.iter().sum::<usize>(), 128 << 20);
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
        assert_eq!(sizes[5], (128 << 20) / 21);
        assert_eq!(layer_sizes(1000, 1), [1000]);
        assert_eq!(layer_sizes(7, 3).iter().sum::<usize>(), 7);
    }

    #[test]
    fn proc_tables_and_qdisc_drops_parse() -> Result<()> {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm OutSegs RetransSegs\nTcp: 1 500 7\n";
        let tcp = proc_fields(snmp, "Tcp:")?;
        assert_eq!(
            tcp,
            [
                ("RtoAlgorithm".into(), 1),
                ("OutSegs".into(), 500),
                ("RetransSegs".into(), 7)
            ]
        );
        assert!(proc_fields(snmp, "TcpExt:").is_err());
        let tc = "qdisc tbf 1: root refcnt 2 rate 25Mbit burst 16Kb lat 50ms\n Sent 123 bytes 4 pkt (dropped 17, overlimits 9 requeues 0)\nqdisc pfifo 10: parent 1:1\n Sent 1 bytes 1 pkt (dropped 3, overlimits 0 requeues 0)\n";
        assert_eq!(qdisc_drops(tc), 20);
        assert_eq!(qdisc_drops("qdisc noqueue 0: root"), 0);
        Ok(())
    }
}

/// A host's TCP counters since its namespace was made.
#[derive(Clone, Copy, Debug)]
pub struct TcpCounts {
    pub sent: u64,
    pub retransmitted: u64,
    /// Connections accepted (`PassiveOpens`).
    pub accepted: u64,
    /// Duplicate SACKs received: a peer got a segment twice, so a retransmission was needless.
    pub dsack_received: u64,
    /// Tail loss probes sent (a retransmission of a flow's last segment when no ACK came).
    pub loss_probes: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Packets the `eth0` queue dropped (the shaper's queue was full).
    pub queue_drops: u64,
}

/// The `name value` pairs of a `/proc/net/snmp` or `/proc/net/netstat` table: a line of names
/// and a line of values, both starting with `prefix`.
fn proc_fields(text: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(anyhow!("no {prefix} lines"));
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The packets dropped by every qdisc `tc -s qdisc show` lists (`dropped N,`).
fn qdisc_drops(text: &str) -> u64 {
    text.split("dropped ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
