//! Clients are served while a blob is still arriving. A rate-limited mirror stands in for a slow
//! upstream link: registry -> slow mirror (ratelimit) -> mirror under test -> clients.

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::{assert_eventually, client, Fixture, Mirror};
use std::io::Read;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

#[test]
fn range_of_a_blob_still_arriving_is_served_before_the_blob_completes() {
    // 8 MiB at 1 MB/s: the ingest runs for about 8 s.
    let fx = Fixture::new(&[8 * MIB], 41, &["--ratelimit", "1M"]);
    let cache = fx.work.path().join("front-cache");
    let front = Mirror::start(&[
        "--upstream",
        fx.mirror.url(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let layer = fx.image.layers[0].clone();
    let blob = fx.image.blob_bytes(&layer.digest);
    let url = format!("{}{}", front.url(), fx.blob_path(&layer.digest));

    // A first client starts the cold fetch and reads slowly in the background.
    let whole = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut body = Vec::new();
            client()
                .get(&url)
                .send()
                .unwrap()
                .read_to_end(&mut body)
                .unwrap();
            body
        })
    };
    assert_eventually(
        Duration::from_secs(10),
        "the front mirror starts its ingest",
        || front.metric("poolcast_mirror_ingests") >= 1.0,
    );

    // A second client asks for the first 64 KiB and gets them while the ingest still runs.
    let range = client()
        .get(&url)
        .header("Range", "bytes=0-65535")
        .send()
        .unwrap();
    assert_eq!(range.status().as_u16(), 206);
    assert_eq!(
        range.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-65535/{}", blob.len())
    );
    assert_eq!(range.bytes().unwrap().as_ref(), &blob[..65536]);
    assert_eq!(
        front.metric("poolcast_mirror_ingests"),
        1.0,
        "the range was answered only after the whole blob arrived"
    );

    // A third client joins the same ingest; upstream sends the blob once.
    let mut joined = Vec::new();
    client()
        .get(&url)
        .send()
        .unwrap()
        .read_to_end(&mut joined)
        .unwrap();
    assert_eq!(joined, blob);
    assert_eq!(whole.join().unwrap(), blob);
    assert_eq!(
        front.metric("poolcast_mirror_upstream_bytes_total"),
        blob.len() as f64
    );
}
