//! Index benchmark at the scale: 10k Services, 50k endpoints (pods),
//! 2k HTTPRoutes, 100 nodes. Prints the initial build time, resident memory,
//! one node's snapshot build/encode time and size, and the time to compute,
//! translate and encode the delta of one change for 100 nodes.
//!
//! `cargo bench -p hawser-control-plane --bench index`

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use hawser_control_plane::index::{Index, IndexConfig, Update};
use hawser_control_plane::translate;

mod scale;
use scale::{NODES, PODS_PER_SERVICE, ROUTES, SERVICES, objects, pod, rss_kib};

fn main() {
    let rss0 = rss_kib();
    let updates = objects();
    let start = Instant::now();
    let mut index = Index::new(IndexConfig::default());
    index.update(updates);
    let build = start.elapsed();
    let rss1 = rss_kib();
    println!(
        "initial build: {SERVICES} services, {} pods, {ROUTES} routes, {} resources in {build:?}; RSS +{} MiB",
        SERVICES * PODS_PER_SERVICE,
        index.resource_count(),
        (rss1.saturating_sub(rss0)) / 1024
    );

    let start = Instant::now();
    let snapshot = index.snapshot("node-0");
    let snap_time = start.elapsed();
    let start = Instant::now();
    let encoded = prost::Message::encode_to_vec(&translate::snapshot(&snapshot));
    let encode_time = start.elapsed();
    println!(
        "one node's snapshot: built in {snap_time:?}, translated+encoded in {encode_time:?}, {} resources, {:.1} MiB encoded",
        snapshot.resources.len(),
        encoded.len() as f64 / (1024.0 * 1024.0)
    );

    // One change: a pod turns not ready.
    let from = index.version();
    let start = Instant::now();
    index.update([Update::Apply(pod(
        42,
        0,
        (42 * PODS_PER_SERVICE) % NODES,
        false,
    ))]);
    let apply = start.elapsed();
    let start = Instant::now();
    let mut bytes = 0;
    for n in 0..NODES {
        let delta = index.delta(&format!("node-{n}"), from).unwrap();
        bytes += prost::Message::encode_to_vec(&translate::delta(&delta)).len();
    }
    let fanout = start.elapsed();
    println!(
        "one change: applied in {apply:?}; deltas for {NODES} nodes computed+translated+encoded in {fanout:?} ({} bytes each)",
        bytes / NODES
    );

    // One route edit.
    let from = index.version();
    let route = objects().pop().unwrap();
    let start = Instant::now();
    index.update([route]);
    let route_apply = start.elapsed();
    let delta = index.delta("node-0", from).unwrap();
    println!(
        "re-applying an unchanged route: {route_apply:?}, delta empty: {}",
        delta.is_empty()
    );
}
