//! Crash safety: the relay binary is killed with SIGKILL while several clients write, then
//! restarted on the same store, twenty times over. Every node a client saw acked before a
//! kill must be in the store afterwards.

#![cfg(unix)]

mod serve;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft::client::{Client, ClientConfig};
use weft::node::{NodeId, RoomId};
use weft::store::Store;

const CYCLES: usize = 20;
const WRITERS: usize = 3;
const ROOM: &str = "crash";

/// Pushes nodes one after another until `stop`, recording each acked id.
async fn write(url: String, writer: usize, acked: Arc<Mutex<Vec<NodeId>>>, stop: Arc<AtomicBool>) {
    let mut config = ClientConfig::new(url, RoomId::new(ROOM).unwrap());
    config.backoff_min = Duration::from_millis(20);
    // Events are not read here: dropping the receiver tells the client not to wait for it.
    let Ok((client, _)) = Client::start(config) else {
        return;
    };
    if tokio::time::timeout(Duration::from_secs(10), client.wait_synced())
        .await
        .is_err()
    {
        return;
    }
    let path = format!("w{writer}");
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let push = client.push(&path, format!("node {n}").into_bytes());
        // A push the kill interrupted never completes; it is simply not counted as acked.
        match tokio::time::timeout(Duration::from_secs(2), push).await {
            Ok(Ok(id)) => acked.lock().unwrap().push(id),
            _ => return,
        }
    }
}

#[test]
fn nothing_acked_is_lost_across_twenty_kill_9_restarts() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut acked_total: HashSet<NodeId> = HashSet::new();
    // Kill times vary per cycle, reproducibly.
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
    for cycle in 0..CYCLES {
        let relay = serve::Serve::start_at(data.path());
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| rt.spawn(write(relay.url.clone(), w, acked.clone(), stop.clone())))
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..450)));
        relay.kill();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            rt.block_on(writer).unwrap();
        }
        let acked_now: Vec<NodeId> = acked.lock().unwrap().clone();
        acked_total.extend(acked_now.iter().copied());

        // What a restarted relay will load.
        let store = weft::store::open(data.path().to_str().unwrap()).unwrap();
        let room = RoomId::new(ROOM).unwrap();
        let stored: HashSet<NodeId> = rt
            .block_on(store.load(&room))
            .unwrap()
            .map(|room| room.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default();
        let lost: Vec<&NodeId> = acked_total.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} acked nodes lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        eprintln!(
            "cycle {cycle}: {} acked this cycle, {} stored",
            acked_now.len(),
            stored.len()
        );
    }
    assert!(
        acked_total.len() >= CYCLES * WRITERS,
        "the writers barely wrote ({} acks): the test would prove nothing",
        acked_total.len()
    );
}
