//! `poolcast preheat` against real parts: the CNCF registry (private, htpasswd) as origin, the
//! pool mirror, a scheduler and agents. The mirror fetches each blob once, the pool's nodes
//! pull through their agents (P2P included), and the rollout's first pull is then served from
//! the node's cache. Nothing is warmed for a user upstream refuses, and every failure exits
//! non-zero naming what failed.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::{PEER_BYTES, SOURCE_BYTES};
use common::p2p::{BedSpec, P2pBed};
use common::preheat::{auth_file, full_ref, preheat, text, wait_for_nodes};
use common::verify_pulled;

const USER: &str = "alice";
const PASS: &str = "s3cret";
const SECRET: &str = "preheat-test-secret";

fn private_bed(seed: u64) -> P2pBed {
    P2pBed::start(BedSpec {
        seed,
        auth: Some((USER, PASS)),
        secret: Some(SECRET),
        ..BedSpec::default()
    })
}

/// Blob bytes agent `i` took from peers and from the mirror.
fn received(bed: &P2pBed, i: usize) -> f64 {
    bed.agents[i].metric(SOURCE_BYTES) + bed.agents[i].peer_bytes("in")
}

#[test]
fn preheat_warms_the_mirror_once_and_every_node_of_the_pool_for_the_first_pull() {
    let mut bed = private_bed(61);
    let pool_a = bed.add_agents(3, "pool-a", &[]);
    let other = bed.add_agent("pool-b", &[]);
    wait_for_nodes(&bed, 4);
    let auth = auth_file(&bed, USER, PASS);
    let image = full_ref(&bed);
    let out = preheat(&[
        &image,
        "--mirror",
        bed.fx.mirror.url(),
        "--scheduler",
        bed.scheduler().url(),
        "--secret",
        SECRET,
        "--pool",
        "pool-a",
        "--auth-file",
        auth.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{image}: mirror holds")),
        "one line per image for the mirror: {said}"
    );
    assert!(
        stdout.contains(&format!("{image}: pulled by 3 of 3 nodes of pool pool-a")),
        "one line per image for the pool: {said}"
    );

    let copy = bed.one_copy();
    assert_eq!(
        bed.fx.upstream_bytes(),
        copy,
        "the mirror fetched each blob from the origin exactly once"
    );
    for &i in &pool_a {
        assert!(
            received(&bed, i) >= copy as f64,
            "{} holds every blob: got {} of {copy} bytes",
            bed.agents[i].node(),
            received(&bed, i)
        );
    }
    assert!(
        bed.peer_bytes(&pool_a, "in") > 0.0,
        "the nodes passed pieces to each other (P2P): {}",
        bed.per_agent(&pool_a, PEER_BYTES)
    );
    assert_eq!(
        received(&bed, other),
        0.0,
        "another pool's node pulled nothing"
    );

    // The rollout's first pull on a preheated node moves no blob byte.
    let before = received(&bed, pool_a[1]);
    let (pulled, dir) = bed.pull_as(pool_a[1], Some((USER, PASS)));
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    verify_pulled(&dir, &bed.fx.image).unwrap();
    assert_eq!(
        received(&bed, pool_a[1]),
        before,
        "the first pull after preheat was served from the node's cache"
    );
}

#[test]
fn preheat_warms_nothing_for_a_user_upstream_refuses() {
    let mut bed = private_bed(62);
    let agents = bed.add_agents(2, "pool-a", &[]);
    wait_for_nodes(&bed, 2);
    let image = full_ref(&bed);
    let wrong = auth_file(&bed, USER, "not-the-password");
    for auth in [None, Some(wrong.to_str().unwrap())] {
        let mut args = vec![
            image.as_str(),
            "--mirror",
            bed.fx.mirror.url(),
            "--scheduler",
            bed.scheduler().url(),
            "--secret",
            SECRET,
            "--pool",
            "pool-a",
        ];
        if let Some(a) = auth {
            args.extend(["--auth-file", a]);
        }
        let out = preheat(&args);
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains("credentials refused"),
            "names the refusal: {said}"
        );
    }
    assert_eq!(bed.fx.upstream_bytes(), 0, "the mirror fetched no blob");
    for &i in &agents {
        assert_eq!(
            received(&bed, i),
            0.0,
            "{} pulled nothing",
            bed.agents[i].node()
        );
    }
}

#[test]
fn preheat_exits_non_zero_naming_an_unknown_tag_an_unreachable_node_and_a_wrong_secret() {
    let mut bed = private_bed(63);
    let agents = bed.add_agents(2, "pool-a", &[]);
    wait_for_nodes(&bed, 2);
    let auth = auth_file(&bed, USER, PASS);
    let auth = auth.to_str().unwrap();
    let mirror = bed.fx.mirror.url().to_owned();
    let scheduler = bed.scheduler().url().to_owned();
    let pool_args = |secret: &'static str| {
        vec![
            "--mirror".to_owned(),
            mirror.clone(),
            "--scheduler".to_owned(),
            scheduler.clone(),
            "--secret".to_owned(),
            secret.to_owned(),
            "--pool".to_owned(),
            "pool-a".to_owned(),
            "--auth-file".to_owned(),
            auth.to_owned(),
        ]
    };
    let run = |image: &str, secret: &'static str| {
        let mut args = vec![image.to_owned()];
        args.extend(pool_args(secret));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = preheat(&args);
        (out.status.success(), text(&out))
    };

    let missing = format!("{}/pool/app:no-such-tag", bed.fx.registry.host());
    let (ok, said) = run(&missing, SECRET);
    assert!(!ok, "{said}");
    assert!(
        said.contains("no-such-tag") && said.contains("unknown tag"),
        "{said}"
    );

    let (ok, said) = run(&full_ref(&bed), "a-wrong-secret");
    assert!(!ok, "{said}");
    assert!(
        said.contains("unauthorized"),
        "names the refused signature: {said}"
    );

    // A node that went away after registering: the scheduler still lists it.
    let gone = agents[1];
    bed.agents[gone].kill();
    let (ok, said) = run(&full_ref(&bed), SECRET);
    assert!(!ok, "{said}");
    let node = bed.agents[gone].node().to_owned();
    assert!(
        said.contains(&format!("node {node}")),
        "names the node: {said}"
    );
    assert!(
        said.contains("pulled by 1 of 2 nodes"),
        "the other node still pulled: {said}"
    );
}

#[test]
fn on_a_terminal_preheat_shows_bytes_rate_and_eta_per_image() {
    // `script` (util-linux, in every Debian) gives preheat a terminal and records what it drew.
    common::require_tool("script");
    let bed = P2pBed::start(BedSpec {
        seed: 64,
        layers: &[24 << 20],
        scheduler: false,
        ..BedSpec::default()
    });
    let image = full_ref(&bed);
    let command = format!(
        "{} preheat {image} --mirror {}",
        env!("CARGO_BIN_EXE_poolcast"),
        bed.fx.mirror.url()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert!(
        drawn.contains(&format!("mirror {image}")) && drawn.contains("ETA"),
        "a progress bar per image: {drawn}"
    );
    assert!(drawn.contains("MiB"), "bytes done of total: {drawn}");
}
