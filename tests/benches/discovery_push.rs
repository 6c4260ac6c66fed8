//! Discovery push at the scale: 10k Services, 50k pods, 2k routes,
//! pushed over real mTLS gRPC streams to 100 connected node clients (one per
//! node, each with its own node certificate). Prints the time until all 100
//! hold the initial snapshot, the time for one change to reach all 100, and
//! the process's resident memory (control plane + 100 clients' configs).
//!
//! `cargo bench -p hawser-tests --bench discovery_push`

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use hawser_control_plane::index::{IndexConfig, SharedIndex, Update};
use hawser_node_proxy::discovery::DiscoveryClient;
use hawser_tests::identity::LocalControlPlane;

#[path = "../../control-plane/benches/scale/mod.rs"]
mod scale;
use scale::{NODES, PODS_PER_SERVICE, ROUTES, SERVICES, objects, pod, rss_kib};

async fn all_reach(
    configs: &mut [tokio::sync::watch::Receiver<
        std::sync::Arc<hawser_node_proxy::discovery::NodeConfig>,
    >],
    version: u64,
) {
    for c in configs.iter_mut() {
        tokio::time::timeout(
            Duration::from_secs(600),
            c.wait_for(|cfg| cfg.version() >= version),
        )
        .await
        .expect("clients converge")
        .expect("client alive");
    }
}

fn main() {
    hawser_api::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rss0 = rss_kib();
        let index = SharedIndex::new(IndexConfig::default());
        let start = Instant::now();
        let version = index.update(objects());
        println!(
            "index: {SERVICES} services, {} pods, {ROUTES} routes built in {:?}, RSS {} MiB",
            SERVICES * PODS_PER_SERVICE,
            start.elapsed(),
            rss_kib().saturating_sub(rss0) / 1024
        );
        let cp = LocalControlPlane::with_index(index.clone()).await.unwrap();
        let mut clients = Vec::new();
        for n in 0..NODES {
            let node = format!("node-{n}");
            let token = cp.add_node(&node, &format!("token-{n}")).unwrap();
            let channel = cp.node_client(&node, token).await.unwrap().channel();
            clients.push(DiscoveryClient::new(channel, node));
        }
        let mut configs: Vec<_> = clients.iter().map(|c| c.config()).collect();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let rss1 = rss_kib();
        let start = Instant::now();
        for c in clients {
            tokio::spawn(c.run(stopped.clone()));
        }
        all_reach(&mut configs, version).await;
        let initial = start.elapsed();
        let resources = configs[0].borrow().len();
        println!(
            "initial snapshot on all {NODES} clients in {initial:?} ({resources} resources each); RSS +{} MiB with {NODES} client configs",
            rss_kib().saturating_sub(rss1) / 1024
        );

        // One change: a pod turns not ready (its workload and Service change).
        let mut samples = Vec::new();
        for round in 0..5 {
            let start = Instant::now();
            let v = index.update([Update::Apply(pod(
                42 + round,
                0,
                ((42 + round) * PODS_PER_SERVICE) % NODES,
                false,
            ))]);
            all_reach(&mut configs, v).await;
            samples.push(start.elapsed());
        }
        samples.sort();
        println!(
            "one change pushed to all {NODES} clients: median {:?}, max {:?} (5 changes)",
            samples[2], samples[4]
        );
        drop(cp);
    });
}
