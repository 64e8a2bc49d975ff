//! `ossInternetAccelerate` end to end: the CNCF registry behind a front that redirects blob
//! downloads to presigned OSS URLs, as ACR does, and the OSS names resolved through the mirror
//! namespace's own hosts file (both to the origin, where the front serves them and logs the Host
//! each request named). With the flag the mirror fetches from `oss-accelerate.aliyuncs.com`,
//! without it from the original host; a V4 URL that signs its host is fetched unaccelerated,
//! with a log line and a counter.
//!
//! ```text
//!   mirror ns: /etc/hosts -> acr-bucket.oss-{cn-hangzhou,accelerate}.aliyuncs.com = origin
//!   mirror --GET blob--> origin:8080 front --307--> http://acr-bucket.oss-...:8080/oss/...
//!          --GET (Host logged)--> front --> docker-registry 127.0.0.1:5000
//! ```

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

use std::net::Ipv4Addr;

use edge_tests::bed::{log_tail, Bed, Host};
use edge_tests::image::{push, sha256_file, TestImage};
use edge_tests::parts::{metric, poolcast, start_registry, REGISTRY_PORT};

const FRONT_PORT: u16 = 8080;
const REGION_HOST: &str = "acr-bucket.oss-cn-hangzhou.aliyuncs.com";
const ACCELERATED: &str = "acr-bucket.oss-accelerate.aliyuncs.com";
const FRONT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fronts/oss_front.py");

struct Setup {
    bed: Bed,
    origin: Host,
    mirror: Host,
    image: TestImage,
    front_log: std::path::PathBuf,
}

fn setup() -> Setup {
    let bed = Bed::new().unwrap();
    let origin = bed
        .add_host("origin", Ipv4Addr::new(10, 77, 0, 1), 0)
        .unwrap();
    let mirror = bed
        .add_host("mirror", Ipv4Addr::new(10, 77, 0, 2), 0)
        .unwrap();
    bed.hosts_file(
        &mirror,
        &[(origin.ip, &format!("{REGION_HOST} {ACCELERATED}"))],
    )
    .unwrap();
    start_registry(&bed, &origin, &bed.fresh_dir("registry")).unwrap();
    let image = TestImage::build(&bed.fresh_dir("image"), &[96 * 1024], 71).unwrap();
    for repo in ["edge/app:1", "edge/app-v4:1", "edge/app-again:1"] {
        push(&image, &bed, &origin, repo).unwrap();
    }
    let front_log = bed.dir().join("front-hosts.txt");
    bed.spawn(
        &origin,
        "oss-front",
        "python3",
        &[
            FRONT.into(),
            FRONT_PORT.to_string(),
            format!("http://127.0.0.1:{REGISTRY_PORT}"),
            REGION_HOST.into(),
            front_log.display().to_string(),
        ],
        Some("oss-front listening"),
    )
    .unwrap();
    Setup {
        bed,
        origin,
        mirror,
        image,
        front_log,
    }
}

impl Setup {
    /// A mirror on `port` of the mirror host in front of the origin's front.
    fn start_mirror(&self, port: u16, accelerate: bool) -> String {
        let mut args = vec![
            "mirror".to_string(),
            "--listen".into(),
            format!("{}:{port}", self.mirror.ip),
            "--upstream".into(),
            format!("http://{}:{FRONT_PORT}", self.origin.ip),
            "--cache-dir".into(),
            self.bed
                .fresh_dir(&format!("cache-{port}"))
                .display()
                .to_string(),
        ];
        if accelerate {
            args.push("--oss-internet-accelerate".into());
        }
        poolcast(
            &self.bed,
            &self.mirror,
            &format!("mirror-{port}"),
            args,
            "poolcast mirror listening on ",
        )
        .unwrap();
        format!("http://{}:{port}", self.mirror.ip)
    }

    /// Fetches the layer of `repo` through `mirror`, checks its digest, and returns the Host
    /// each GET of it at the OSS front named.
    fn fetch(&self, mirror: &str, repo: &str) -> Vec<String> {
        let layer = &self.image.layers[0];
        let out = self
            .bed
            .fresh_dir(&format!("out-{}", repo.replace('/', "-")));
        let file = out.join("blob");
        self.bed
            .run_ok(
                &self.mirror,
                "curl",
                &[
                    "-sf",
                    "--max-time",
                    "30",
                    "-o",
                    file.to_str().unwrap(),
                    &format!("{mirror}/v2/{repo}/blobs/{}", layer.digest),
                ],
            )
            .unwrap();
        assert_eq!(
            format!("sha256:{}", sha256_file(&file).unwrap()),
            layer.digest,
            "{repo}: the blob verifies"
        );
        let log = std::fs::read_to_string(&self.front_log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (method, host, r) = (f.next()?, f.next()?, f.next()?);
                (method == "GET" && r == repo).then(|| host.to_string())
            })
            .collect()
    }
}

#[test]
fn accelerated_mirrors_fetch_oss_blobs_from_oss_accelerate_and_others_from_the_original_host() {
    let s = setup();
    let on = s.start_mirror(5001, true);
    let hosts = s.fetch(&on, "edge/app");
    assert_eq!(
        hosts,
        [format!("{ACCELERATED}:{FRONT_PORT}")],
        "with ossInternetAccelerate"
    );
    assert_eq!(
        metric(
            &s.bed,
            &s.mirror,
            &on,
            "poolcast_mirror_oss_unaccelerated_total",
            None
        )
        .unwrap(),
        0.0
    );

    let off = s.start_mirror(5002, false);
    // A new repository for a new log line: the same blob under another name, signed V1 as
    // the first, so only the setting keeps it on the region's host.
    let hosts = s.fetch(&off, "edge/app-again");
    assert_eq!(hosts, [format!("{REGION_HOST}:{FRONT_PORT}")], "without it");
}

#[test]
fn a_v4_url_that_signs_its_host_is_fetched_unaccelerated_with_a_log_line_and_a_counter() {
    let s = setup();
    let on = s.start_mirror(5003, true);
    let hosts = s.fetch(&on, "edge/app-v4");
    assert_eq!(
        hosts,
        [format!("{REGION_HOST}:{FRONT_PORT}")],
        "the signed host is kept"
    );
    let unaccelerated = metric(
        &s.bed,
        &s.mirror,
        &on,
        "poolcast_mirror_oss_unaccelerated_total",
        None,
    )
    .unwrap();
    assert!(unaccelerated >= 1.0, "{unaccelerated}");
    let log = log_tail(&s.bed.log_path("mirror-5003"), 20_000);
    assert!(log.contains("fetched unaccelerated"), "{log}");
}
