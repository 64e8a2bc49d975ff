//! The fan-out benchmark: one payload from one source to N nodes over shaped links, on one bed
//! and in one run, by poolcast (p2p with a cold or warm mirror, source mode; a blob with curl,
//! a multi-layer image with skopeo) and by BitTorrent (opentracker, one aria2c seed), against
//! the Kumar-Ross bound. Needs root. See `edge_tests::fanout` and docs/edge-tests.md.
//!
//! ```text
//!   cargo run -p edge-tests --release --bin fanout -- --nodes 16 --size 128MiB --rate 50mbit
//!   cargo run -p edge-tests --release --bin fanout -- --nodes 16 --down 50mbit --up 10mbit
//! ```

fn main() -> anyhow::Result<()> {
    let opts = <edge_tests::fanout::Opts as clap::Parser>::parse();
    edge_tests::fanout::run(&opts)
}
