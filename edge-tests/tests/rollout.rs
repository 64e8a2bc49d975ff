//! Rollouts across shaped links: every node in its own network namespace pulls the same cold
//! image through its own agent with skopeo, and ends with a digest-identical image.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use std::net::Ipv4Addr;

use edge_tests::bed::Bed;
use edge_tests::image::{self, skopeo_pull, TestImage};
use edge_tests::parts::{self, AgentSpec, AGENT_PORT};
use edge_tests::pool::{
    EdgePool, PoolSpec, AGENT_PEER_BYTES, AGENT_SOURCE_BYTES, MIB, MIRROR_SERVED, REPO, TAG,
    UPSTREAM_BYTES,
};

const PEER_IN: Option<&str> = Some("direction=\"in\"");
const PEER_OUT: Option<&str> = Some("direction=\"out\"");

#[test]
fn p2p_rollout_every_node_gets_the_image_and_upstream_sends_one_copy() {
    let pool = EdgePool::start(PoolSpec {
        nodes: 5,
        seed: 41,
        ..PoolSpec::default()
    })
    .unwrap();
    let durations = pool.rollout().unwrap();

    let copy = pool.image.total_blob_bytes() as f64;
    let upstream = pool.mirror_metric(UPSTREAM_BYTES).unwrap();
    let served = pool.mirror_metric(MIRROR_SERVED).unwrap();
    let all: Vec<usize> = (0..pool.nodes.len()).collect();
    let peer_in = pool.agents_metric(&all, AGENT_PEER_BYTES, PEER_IN).unwrap();
    eprintln!(
        "p2p rollout, 5 nodes at 100 mbit, {copy} bytes: slowest {:?}; mirror upstream {:.2} \
         copies, served {:.2} copies; peer to peer {:.2} copies",
        durations.iter().max().unwrap(),
        upstream / copy,
        served / copy,
        peer_in / copy
    );
    assert_eq!(
        upstream, copy,
        "the mirror must fetch exactly one copy from upstream"
    );
    assert!(peer_in > copy, "less than one copy moved peer to peer");
    assert!(
        served < 2.5 * copy,
        "the mirror served {:.2} copies to 5 nodes",
        served / copy
    );
}

#[test]
fn source_mode_rollout_serves_every_node_from_the_mirror() {
    let pool = EdgePool::start(PoolSpec {
        nodes: 4,
        seed: 42,
        p2p: false,
        ..PoolSpec::default()
    })
    .unwrap();
    pool.rollout().unwrap();

    let copy = pool.image.total_blob_bytes() as f64;
    let all: Vec<usize> = (0..pool.nodes.len()).collect();
    let peer = pool.agents_metric(&all, AGENT_PEER_BYTES, None).unwrap();
    assert_eq!(peer, 0.0, "source mode moved bytes between peers");
    for &i in &all {
        let from_mirror = pool.agent_metric(i, AGENT_SOURCE_BYTES, None).unwrap();
        assert!(
            from_mirror >= copy,
            "node {} took {from_mirror} bytes from the mirror",
            i + 1
        );
    }
    assert_eq!(pool.mirror_metric(UPSTREAM_BYTES).unwrap(), copy);
}

/// Source mode over a thin mirror link at the default `transferTimeout` (15 s): eight nodes, two
/// layers each share the mirror's 50 mbit, so a piece takes many seconds to arrive although
/// bytes keep flowing. A slow piece is not a failed one: only `transferTimeout` without data
/// abandons a transfer (this once failed every pull with `unexpected EOF`).
#[test]
fn source_mode_over_a_thin_mirror_link_completes_at_default_settings() {
    let pool = EdgePool::start(PoolSpec {
        nodes: 8,
        mbit: 50,
        layers: vec![16 * MIB, 8 * MIB],
        seed: 45,
        p2p: false,
        ..PoolSpec::default()
    })
    .unwrap();
    pool.rollout().unwrap();
}

#[test]
fn five_percent_packet_loss_on_a_node_link_does_not_stop_the_rollout() {
    let pool = EdgePool::start(PoolSpec {
        nodes: 4,
        seed: 43,
        ..PoolSpec::default()
    })
    .unwrap();
    pool.bed.drop_packets(&pool.nodes[1].host, 0.05).unwrap();
    let durations = pool.rollout().unwrap();
    eprintln!("rollout with 5% loss on n2: {durations:.1?}");
    assert_eq!(
        pool.mirror_metric(UPSTREAM_BYTES).unwrap(),
        pool.image.total_blob_bytes() as f64
    );
}

/// Two pools on one bridge (the network would let them talk), one scheduler that knows them as
/// not inter-connected, a mirror each. iptables in every node counts what arrives from the other
/// pool's subnet: nothing may.
#[test]
fn two_pools_not_inter_connected_exchange_no_bytes() {
    let bed = Bed::new().unwrap();
    let mbit = 100;
    let origin = bed
        .add_host("origin", Ipv4Addr::new(10, 77, 0, 2), mbit)
        .unwrap();
    let scheduler = bed
        .add_host("scheduler", Ipv4Addr::new(10, 77, 0, 4), mbit)
        .unwrap();
    let image = TestImage::build(&bed.fresh_dir("image"), &[8 * MIB, 4 * MIB], 44).unwrap();
    parts::start_registry(&bed, &origin, &bed.fresh_dir("registry")).unwrap();
    image::push(&image, &bed, &origin, &format!("{REPO}:{TAG}")).unwrap();
    parts::start_scheduler(&bed, &scheduler, Some("- id: pool-a\n- id: pool-b")).unwrap();

    let mut pools = Vec::new();
    for (p, name) in [(1u8, "pool-a"), (2u8, "pool-b")] {
        let mirror = bed
            .add_host(
                &format!("mirror-{p}"),
                Ipv4Addr::new(10, 77, 0, 10 + p),
                mbit,
            )
            .unwrap();
        parts::start_mirror(
            &bed,
            &mirror,
            &origin,
            &bed.fresh_dir(&format!("mirror-{p}")),
        )
        .unwrap();
        let spec = AgentSpec {
            mirror: mirror.clone(),
            scheduler: Some(scheduler.clone()),
            pool: name.into(),
            blocksize: Some("1MiB".into()),
            extra: vec![],
        };
        let other = format!("10.77.{}.0/24", 3 - p);
        let mut nodes = Vec::new();
        for i in 1..=3u8 {
            let host = bed
                .add_host(&format!("p{p}n{i}"), Ipv4Addr::new(10, 77, p, i), mbit)
                .unwrap();
            bed.count_from(&host, &other).unwrap();
            parts::start_agent(
                &bed,
                &host,
                &spec,
                &bed.fresh_dir(&format!("{}-cache", host.name)),
            )
            .unwrap();
            nodes.push(host);
        }
        pools.push((mirror, nodes));
    }

    let pulls: Vec<_> = pools
        .iter()
        .flat_map(|(_, nodes)| nodes.iter())
        .map(|host| {
            let (host, out) = (host.clone(), bed.fresh_dir(&format!("pull-{}", host.name)));
            std::thread::spawn(move || {
                skopeo_pull(
                    &host,
                    &format!("{}:{AGENT_PORT}/{REPO}:{TAG}", host.ip),
                    &out,
                )
                .map(|()| out)
            })
        })
        .collect();
    for pull in pulls {
        image.verify(&pull.join().unwrap().unwrap()).unwrap();
    }

    let copy = image.total_blob_bytes() as f64;
    for (mirror, nodes) in &pools {
        let url = format!("http://{}:{}", mirror.ip, parts::MIRROR_PORT);
        let upstream = parts::metric(&bed, mirror, &url, UPSTREAM_BYTES, None).unwrap();
        assert_eq!(
            upstream, copy,
            "{} fetched {upstream} bytes upstream",
            mirror.name
        );
        let (mut peer_in, mut peer_out) = (0.0, 0.0);
        for host in nodes {
            let url = format!("http://{}:{AGENT_PORT}", host.ip);
            peer_in += parts::metric(&bed, host, &url, AGENT_PEER_BYTES, PEER_IN).unwrap();
            peer_out += parts::metric(&bed, host, &url, AGENT_PEER_BYTES, PEER_OUT).unwrap();
            let crossed = bed.counted_bytes(host).unwrap();
            assert_eq!(
                crossed, 0,
                "{} received {crossed} bytes from the other pool",
                host.name
            );
        }
        assert!(peer_in > 0.0, "no peer traffic inside {}", mirror.name);
        assert_eq!(
            peer_in, peer_out,
            "peer bytes in and out of {}'s pool differ",
            mirror.name
        );
    }
}
