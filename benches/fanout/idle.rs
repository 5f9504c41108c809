//! Idle-room pack → ack: one writer sends a pack, waits for its ack, lets the room go idle,
//! and again, while a few receivers read the broadcasts. What a lone edit costs when nothing
//! else is happening (DESIGN.md §11.1: ≤ 0.5 ms on `memory://`).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use weft::node::RoomId;
use weft::protocol::{Message, Pack};

use super::common::{self, Relay, now_ns};

/// Pause between packs, so that each finds the room idle (its previous commit done).
const PAUSE: Duration = Duration::from_millis(5);

/// Pack → ack latencies in microseconds, sorted, of `packs` packs sent one at a time into a
/// fresh room that `receivers` sessions read. The writer has its own thread and runtime, as in
/// the sweep, so the receivers' reads never delay its timing.
pub async fn pack_to_ack(
    relay: &Relay,
    room_name: &str,
    receivers: usize,
    packs: u64,
    payload: usize,
    reader_buffer: usize,
) -> anyhow::Result<Vec<u32>> {
    let url = relay.url(room_name);
    let room = RoomId::new(room_name)?;
    let stop = CancellationToken::new();
    let mut readers = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        let mut ws = common::connect(&url, reader_buffer).await?;
        common::join(&mut ws).await?;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
                    () = stop.cancelled() => return,
                }
            }
        }));
    }
    let writer = std::thread::spawn(move || {
        common::pin_current_thread(super::GENERATOR_CPU);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(write(&url, &room, packs, payload))
    });
    let result = loop {
        if writer.is_finished() {
            break writer
                .join()
                .map_err(|_| anyhow::anyhow!("idle writer panicked"))?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.cancel();
    for reader in readers {
        let _ended = reader.await;
    }
    let mut latencies = result?;
    latencies.sort_unstable();
    Ok(latencies)
}

async fn write(url: &str, room: &RoomId, packs: u64, payload: usize) -> anyhow::Result<Vec<u32>> {
    let mut ws = common::connect(url, 64 * 1024).await?;
    common::join(&mut ws).await?;
    let mut latencies = Vec::with_capacity(packs as usize);
    let mut parent = None;
    for k in 0..packs {
        let node = common::timed_node(room, parent, k, now_ns(), payload);
        parent = Some((node.id, node.depth));
        let frame = Message::Pack(Pack {
            number: k,
            nodes: vec![node],
        })
        .encode()?;
        let sent = Instant::now();
        ws.send(WsMessage::Binary(frame)).await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), common::next_frame(&mut ws))
                .await
                .context("no ack within 10 s")??;
            if matches!(frame, Message::Ack(_)) {
                break;
            }
        }
        let us = sent.elapsed().as_micros();
        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        tokio::time::sleep(PAUSE).await;
    }
    let _closed = ws.close(None).await;
    Ok(latencies)
}
