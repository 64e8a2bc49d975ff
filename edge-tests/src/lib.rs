//! Multi-host tests and the fan-out benchmark for poolcast. Each host (node, origin registry,
//! mirror, scheduler) is a network namespace with its own address and a `tc tbf`-shaped link,
//! and runs real processes: `poolcast`, `docker-registry`, skopeo, aria2c and opentracker.
//!
//! [`bed`] builds and always tears down the namespaces; [`parts`] starts the components inside
//! them; [`pool`] is the one-pool arrangement most scenarios use; [`image`] makes test images;
//! [`torrent`] is BitTorrent for the fan-out benchmark, [`fanout`] the benchmark itself
//! (`src/bin/fanout.rs`).
//! Everything here needs root and refuses to start without it, naming what is missing.

pub mod bed;
pub mod fanout;
pub mod image;
pub mod parts;
pub mod pool;
pub mod sim;
pub mod torrent;
