//! A reader that stops reading is closed with "resync required" within the maximum lag (plus
//! a second), not only once the kernel's socket buffers have absorbed megabytes for it.

mod net;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use net::*;
use weft::protocol::{Message, Pack};
use weft::server::ServerConfig;

const MAX_LAG: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_within_max_lag_and_a_second() {
    let mut config = ServerConfig::default();
    config.connection.max_lag = MAX_LAG;
    // Lag, not bytes, must close it: the queue could hold the whole run.
    config.connection.queue_limit = 256 * 1024 * 1024;
    // A stalled peer never takes the close frame; the relay gives up on it at once.
    config.connection.close_timeout = Duration::from_millis(100);
    let relay = Relay::start_with(config).await;
    let mut reader = Raw::connect(&relay, "stall").await;
    reader.join_and_catch_up().await;
    let mut writer = Raw::connect(&relay, "stall").await;
    writer.join_and_catch_up().await;
    assert_eq!(relay.stats.connections.load(Ordering::Relaxed), 2);

    // The reader is live: it reads the first broadcast. Then it stops reading.
    let payload = "s".repeat(4096);
    let mut number = 1;
    let first = node("stall", &[], "s/1", &payload);
    writer
        .send(Message::Pack(Pack {
            number,
            nodes: vec![first],
        }))
        .await;
    assert!(matches!(writer.recv().await, Message::Ack(_)));
    assert!(matches!(reader.recv().await, Message::Broadcast(_)));
    let stalled_at = Instant::now();

    // About 1 MB/s of nodes until the relay lets the reader go (bounded in time).
    while relay.stats.connections.load(Ordering::Relaxed) == 2 {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(20),
            "the stalled reader was never closed"
        );
        number += 1;
        let node = node("stall", &[], &format!("s/{number}"), &payload);
        writer
            .send(Message::Pack(Pack {
                number,
                nodes: vec![node],
            }))
            .await;
        assert!(matches!(writer.recv().await, Message::Ack(_)));
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let took = stalled_at.elapsed();
    assert!(
        took >= MAX_LAG && took <= MAX_LAG + Duration::from_secs(1),
        "closed {took:?} after the reader stalled (max lag {MAX_LAG:?}), after {number} nodes"
    );
    assert_eq!(
        relay.stats.queues.overflows.load(Ordering::Relaxed),
        0,
        "closed for lag, not bytes"
    );
    relay.shutdown().await;
}
