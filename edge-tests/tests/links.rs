//! The bed's links: each direction of a host's link is shaped on its own (upload on its `eth0`,
//! download on its hub port), so an edge site whose uplink is a fraction of its downlink is
//! what the fan-out benchmark's `--down`/`--up` measure.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use edge_tests::bed::{Bed, Host, Link};
use edge_tests::image::random_bytes;

const FILE_BYTES: usize = 1_000_000;

/// Seconds `client` takes to fetch the file from `server`'s web server.
fn fetch_secs(bed: &Bed, client: &Host, server: &Host) -> f64 {
    let url = format!("http://{}:8080/f", server.ip);
    let started = Instant::now();
    let out = bed
        .run(
            client,
            "curl",
            &["-sSf", "-o", "/dev/null", &url],
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

#[test]
fn a_host_uploads_at_its_uplink_rate_and_downloads_at_its_downlink_rate() {
    let bed = Bed::new().unwrap();
    let (slow, fast) = (4_000_000, 80_000_000);
    let thin_up = bed
        .add_host_with(
            "thinup",
            Ipv4Addr::new(10, 77, 0, 2),
            Link {
                up_bps: slow,
                down_bps: fast,
            },
        )
        .unwrap();
    let thin_down = bed
        .add_host_with(
            "thindown",
            Ipv4Addr::new(10, 77, 0, 3),
            Link {
                up_bps: fast,
                down_bps: slow,
            },
        )
        .unwrap();
    let wide = bed
        .add_host_with("wide", Ipv4Addr::new(10, 77, 0, 4), Link::symmetric(fast))
        .unwrap();
    let www = bed.fresh_dir("www");
    std::fs::write(www.join("f"), random_bytes(FILE_BYTES, 7)).unwrap();
    for host in [&thin_up, &wide] {
        let args: Vec<String> = [
            "-m",
            "http.server",
            "8080",
            "--bind",
            &host.ip.to_string(),
            "--directory",
            &www.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        bed.spawn(host, &format!("www-{}", host.name), "python3", &args, None)
            .unwrap();
        bed.wait_http(host, &format!("http://{}:8080/", host.ip))
            .unwrap();
    }
    // 1 MB is 2 s at 4 mbit and 0.1 s at 80: a shaped direction cannot be quick, and the
    // margin for an unshaped one covers a busy machine.
    let at_slow = FILE_BYTES as f64 * 8.0 / slow as f64;
    let up = fetch_secs(&bed, &wide, &thin_up);
    let down_wide = fetch_secs(&bed, &thin_up, &wide);
    let down_thin = fetch_secs(&bed, &thin_down, &wide);
    eprintln!("4 mbit uplink {up:.2} s; 80 mbit downlink {down_wide:.2} s; 4 mbit downlink {down_thin:.2} s");
    assert!(up > 0.8 * at_slow, "a 4 mbit uplink sent 1 MB in {up:.2} s");
    assert!(
        down_wide < 0.5 * at_slow,
        "the same host's 80 mbit downlink took {down_wide:.2} s for 1 MB"
    );
    assert!(
        down_thin > 0.8 * at_slow,
        "a 4 mbit downlink received 1 MB in {down_thin:.2} s"
    );
}
