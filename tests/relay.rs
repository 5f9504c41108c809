//! Loopback integration tests: real clients over real WebSocket against a real relay.

mod net;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use net::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use weft::client::{Client, ClientConfig, DisconnectKind, Event, PushError};
use weft::node::{NodeId, Rejection};
use weft::protocol::Plan;
use weft::protocol::{
    Ack, Batch, Broadcast, CatchUpDone, CloseCode, Credit, ErrorCode, Ids, Message, MessageType,
    Need, Outcome, Pack, Presence, PresenceUpdate, Resolved, Welcome,
};
use weft::replica::{OverLimit, Replica, SizeLimit, replay};
use weft::server::ServerConfig;
use weft::store::{PackStore, Store};

fn ids_of(client: &Client) -> BTreeSet<NodeId> {
    client.with_replica(|r| r.ids().copied().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_writers_converge() {
    let relay = Relay::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(synced_client(&relay, "trio").await.0);
    }
    let clients = std::sync::Arc::new(clients);
    let mut writers = Vec::new();
    for w in 0..3 {
        let clients = clients.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                // Shared paths make concurrent writes conflict on purpose.
                let path = format!("doc/{}", i % 5);
                clients[w]
                    .push(&path, format!("writer {w} edit {i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // 3 writers x 40 acked nodes; every replica must end with all 120.
    eventually("all replicas hold 120 nodes", || {
        clients.iter().all(|c| ids_of(c).len() == 120)
    })
    .await;
    let sets: Vec<_> = clients.iter().map(ids_of).collect();
    assert!(
        sets.windows(2).all(|w| w[0] == w[1]),
        "replicas hold different node sets"
    );
    let maps: Vec<_> = clients
        .iter()
        .map(|c| c.with_replica(|r| replay::materialize(r.nodes())))
        .collect();
    assert_eq!(maps[0].len(), 5);
    assert!(
        maps.windows(2).all(|w| w[0] == w[1]),
        "replicas materialize different maps"
    );
    // A fresh reader that only catches up sees the same history.
    let (late, _) = synced_client(&relay, "trio").await;
    assert_eq!(ids_of(&late), sets[0]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_reconnects_and_both_sides_converge() {
    let dir = std::env::temp_dir().join(format!("weft-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("replica");
    let relay = Relay::start().await;
    let (online, _) = synced_client(&relay, "offline").await;
    online.push("a", "online 1").await.unwrap();

    // The offline client syncs once, saves, and goes away.
    let mut config = ClientConfig::new(relay.url(), room("offline"));
    config.replica_file = Some(file.clone());
    let (client, _) = Client::start(config.clone()).unwrap();
    client.wait_synced().await.unwrap();
    client.close().await.unwrap();

    // Meanwhile both sides write: the online peer through the relay, the offline one locally.
    online.push("b", "online 2").await.unwrap();
    let mut replica = weft::replica::Replica::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    let offline_ids: Vec<NodeId> = (0..5)
        .map(|i| {
            replica
                .create(&format!("local/{i}"), format!("offline {i}"))
                .unwrap()
        })
        .collect();
    std::fs::write(&file, replica.to_bytes().unwrap()).unwrap();

    let (back, _) = Client::start(config).unwrap();
    back.wait_synced().await.unwrap();
    eventually("both sides hold 7 nodes", || {
        ids_of(&back).len() == 7 && ids_of(&online).len() == 7
    })
    .await;
    assert_eq!(ids_of(&back), ids_of(&online));
    for id in &offline_ids {
        assert!(
            online.with_replica(|r| r.contains(id)),
            "offline node reached the online peer"
        );
        assert!(back.with_replica(|r| r.is_synced(id)), "offline node acked");
    }
    back.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_idempotent() {
    let relay = Relay::start().await;
    let mut raw = Raw::connect(&relay, "dup").await;
    raw.join_and_catch_up().await;
    let a = node("dup", &[], "a", "x");
    raw.send(Message::Pack(Pack {
        number: 1,
        nodes: vec![a.clone(), a.clone()],
    }))
    .await;
    let Message::Ack(ack) = raw.recv().await else {
        panic!("expected ack")
    };
    assert_eq!(
        ack.outcomes,
        vec![Outcome::Accepted(1), Outcome::Duplicate(1)]
    );
    raw.send(Message::Pack(Pack {
        number: 2,
        nodes: vec![a.clone()],
    }))
    .await;
    let Message::Ack(ack) = raw.recv().await else {
        panic!("expected ack")
    };
    assert_eq!(
        ack,
        Ack {
            number: 2,
            outcomes: vec![Outcome::Duplicate(1)]
        }
    );
    let mut reader = Raw::connect(&relay, "dup").await;
    assert_eq!(reader.join_and_catch_up().await, vec![a]);
    relay.shutdown().await;
}

#[tokio::test]
async fn orphan_is_admitted_when_its_parent_arrives() {
    let relay = Relay::start().await;
    let mut writer = Raw::connect(&relay, "orphans").await;
    writer.join_and_catch_up().await;
    let mut watcher = Raw::connect(&relay, "orphans").await;
    watcher.join_and_catch_up().await;
    let parent = node("orphans", &[], "p", "parent");
    let child = node("orphans", &[&parent], "c", "child");
    writer
        .send(Message::Pack(Pack {
            number: 1,
            nodes: vec![child.clone()],
        }))
        .await;
    let Message::Ack(ack) = writer.recv().await else {
        panic!("expected ack")
    };
    assert_eq!(ack.outcomes, vec![Outcome::Pending]);
    writer
        .send(Message::Pack(Pack {
            number: 2,
            nodes: vec![parent.clone()],
        }))
        .await;
    let Message::Ack(ack) = writer.recv().await else {
        panic!("expected ack")
    };
    assert_eq!(ack.outcomes, vec![Outcome::Accepted(1)]);
    let Message::Resolved(resolved) = writer.recv().await else {
        panic!("expected resolved")
    };
    assert_eq!(
        resolved,
        Resolved {
            outcomes: vec![(child.id, Outcome::Accepted(2))]
        }
    );
    // The watcher sees parent then child, numbered consecutively.
    let Message::Broadcast(b) = watcher.recv().await else {
        panic!("expected broadcast")
    };
    assert_eq!(
        b,
        Broadcast {
            first_seq: 1,
            nodes: vec![parent, child]
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_nodes_get_typed_rejections_and_change_nothing() {
    let relay = Relay::start().await;
    let mut raw = Raw::connect(&relay, "bad").await;
    raw.join_and_catch_up().await;
    let good = node("bad", &[], "ok", "fine");
    let mut tampered = node("bad", &[], "t", "x");
    tampered.payload = Bytes::from_static(b"y");
    let other_room = node("elsewhere", &[], "o", "x");
    let mut wrong_depth = node("bad", &[&good], "d", "x");
    wrong_depth.depth = 5;
    wrong_depth.id = wrong_depth.content_id(&room("bad"));
    let bad_path =
        weft::node::Node::new(&room("bad"), vec![], 0, None, "a//b", vec![], b"x".to_vec());
    raw.send(Message::Pack(Pack {
        number: 1,
        nodes: vec![good.clone(), tampered, other_room, wrong_depth, bad_path],
    }))
    .await;
    let Message::Ack(ack) = raw.recv().await else {
        panic!("expected ack")
    };
    assert_eq!(
        ack.outcomes,
        vec![
            Outcome::Accepted(1),
            Outcome::Rejected(Rejection::HashMismatch),
            Outcome::Rejected(Rejection::HashMismatch),
            Outcome::Rejected(Rejection::DepthMismatch),
            Outcome::Rejected(Rejection::BadPath),
        ]
    );
    let mut reader = Raw::connect(&relay, "bad").await;
    assert_eq!(reader.join_and_catch_up().await, vec![good]);
    relay.shutdown().await;
}

/// One malformed frame per message type: a valid envelope naming the type with a body that is
/// not that message.
fn malformed_frames() -> Vec<(MessageType, Bytes)> {
    MessageType::ALL
        .iter()
        .map(|ty| {
            // [type, "garbage"]
            let mut frame = vec![0x92, ty.code(), 0xa7];
            frame.extend_from_slice(b"garbage");
            (*ty, Bytes::from(frame))
        })
        .collect()
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_state_survives() {
    let mut config = ServerConfig::default();
    config.rooms.hub.session.limits.max_pack_nodes = 4;
    let relay = Relay::start_with(config).await;
    let mut raw = Raw::connect(&relay, "fuzzy").await;
    raw.join_and_catch_up().await;
    let a = node("fuzzy", &[], "a", "kept");
    raw.send(Message::Pack(Pack {
        number: 1,
        nodes: vec![a.clone()],
    }))
    .await;
    assert!(matches!(raw.recv().await, Message::Ack(_)));

    // Fewer than the error budget (8), so the session must survive all of them.
    let frames = malformed_frames();
    for chunk in frames.chunks(7) {
        for (ty, frame) in chunk {
            raw.send_bytes(frame.clone()).await;
            let Message::ErrorMessage(error) = raw.recv().await else {
                panic!("expected an error frame for {ty:?}")
            };
            assert_eq!(
                ErrorCode::from_code(error.code),
                Some(ErrorCode::Malformed),
                "{ty:?}: {error:?}"
            );
            assert_eq!(
                error.message_type,
                ty.code(),
                "error names the offending type"
            );
        }
        // Still alive and still accepting after each batch of errors; a fresh connection
        // resets the error budget.
        let b = node("fuzzy", &[&a], "b", "after");
        raw.send(Message::Pack(Pack {
            number: 2,
            nodes: vec![b.clone()],
        }))
        .await;
        let Message::Ack(ack) = raw.recv().await else {
            panic!("expected ack")
        };
        assert!(matches!(
            ack.outcomes[..],
            [Outcome::Accepted(_) | Outcome::Duplicate(_)]
        ));
        raw = Raw::connect(&relay, "fuzzy").await;
        raw.join_and_catch_up().await;
    }
    // Limit errors and phase errors are typed too.
    let many: Vec<_> = (0..5)
        .map(|i| node("fuzzy", &[], &format!("m{i}"), "x"))
        .collect();
    raw.send(Message::Pack(Pack {
        number: 3,
        nodes: many,
    }))
    .await;
    let Message::ErrorMessage(error) = raw.recv().await else {
        panic!("expected error")
    };
    assert_eq!(
        ErrorCode::from_code(error.code),
        Some(ErrorCode::LimitExceeded)
    );
    raw.send(Message::Ids(Ids {
        ids: vec![],
        last: true,
    }))
    .await;
    let Message::ErrorMessage(error) = raw.recv().await else {
        panic!("expected error")
    };
    assert_eq!(
        ErrorCode::from_code(error.code),
        Some(ErrorCode::Unexpected)
    );
    assert_eq!(error.message_type, MessageType::Ids.code());
    // Relay-only messages sent by a client are unexpected, not crashes.
    let welcome_like = Message::Need(Need {
        ids: vec![],
        last: true,
    });
    raw.send(welcome_like).await;
    let Message::ErrorMessage(error) = raw.recv().await else {
        panic!("expected error")
    };
    assert_eq!(
        ErrorCode::from_code(error.code),
        Some(ErrorCode::Unexpected)
    );

    // Accepted state intact: exactly a and b.
    let mut reader = Raw::connect(&relay, "fuzzy").await;
    let nodes = reader.join_and_catch_up().await;
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0], a);
    relay.shutdown().await;
}

#[tokio::test]
async fn too_many_errors_close_with_protocol_violation() {
    let relay = Relay::start().await;
    let mut raw = Raw::connect(&relay, "noisy").await;
    raw.join_and_catch_up().await;
    for _ in 0..8 {
        raw.send_bytes(Bytes::from_static(&[0xc1])).await;
    }
    assert_eq!(
        raw.closed().await,
        Some(CloseCode::ProtocolViolation.code())
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn hello_must_come_first_and_versions_must_overlap() {
    let relay = Relay::start().await;
    let mut raw = Raw::connect(&relay, "hs").await;
    raw.send(Message::Credit(Credit { bytes: 1 })).await;
    let Message::ErrorMessage(error) = raw.recv().await else {
        panic!("expected error")
    };
    assert_eq!(
        ErrorCode::from_code(error.code),
        Some(ErrorCode::Unexpected)
    );
    assert_eq!(
        raw.closed().await,
        Some(CloseCode::ProtocolViolation.code())
    );

    let mut raw = Raw::connect(&relay, "hs").await;
    let mut future = hello(Default::default());
    future.min_version = 7;
    future.max_version = 9;
    raw.send(Message::Hello(future)).await;
    let Message::ErrorMessage(error) = raw.recv().await else {
        panic!("expected error")
    };
    assert_eq!(
        ErrorCode::from_code(error.code),
        Some(ErrorCode::UnsupportedVersion)
    );
    assert_eq!(
        raw.closed().await,
        Some(CloseCode::UnsupportedVersion.code())
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn silent_connection_hits_the_handshake_timeout() {
    let mut config = ServerConfig::default();
    config.rooms.hub.handshake_timeout = Duration::from_millis(200);
    let relay = Relay::start_with(config).await;
    let mut raw = Raw::connect(&relay, "slow").await;
    assert_eq!(raw.closed().await, Some(CloseCode::HandshakeTimeout.code()));
    relay.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let mut config = ServerConfig::default();
    config.rooms.hub.session.limits.max_frame = 64 * 1024;
    config.rooms.hub.session.limits.node.max_payload = 32 * 1024;
    let relay = Relay::start_with(config).await;
    let mut raw = Raw::connect(&relay, "big").await;
    raw.join_and_catch_up().await;
    raw.send_bytes(Bytes::from(vec![0u8; 128 * 1024])).await;
    assert_eq!(raw.closed().await, Some(CloseCode::TooBig.code()));
    relay.shutdown().await;
}

/// A frame far over the limit must end in close 1009 every time, never in a connection reset.
/// The relay refuses it from its header, long before the client has finished writing it; a
/// client that writes the whole frame before it reads again (as a simple client does) only
/// sees the close if the relay reads and drops the rest of the frame before it closes the
/// socket: closing with unread input resets the connection and fails the client's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_over_the_limit_is_closed_with_1009_not_reset() {
    let relay = Relay::start().await;
    let max_frame = ServerConfig::default().rooms.hub.session.limits.max_frame as usize;
    // Far more than loopback socket buffers hold, so the write is still going on when the
    // relay refuses the frame.
    let huge = Bytes::from(vec![7u8; 32 * max_frame]);
    for attempt in 0..5 {
        let mut raw = Raw::connect(&relay, "huge").await;
        raw.join_and_catch_up().await;
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            raw.socket.send(WsMessage::Binary(huge.clone())),
        )
        .await
        .expect("the relay keeps reading until the frame is written");
        assert!(
            sent.is_ok(),
            "attempt {attempt}: the write failed: {sent:?}"
        );
        assert_eq!(
            raw.closed().await,
            Some(CloseCode::TooBig.code()),
            "attempt {attempt}"
        );
    }
    relay.shutdown().await;
}

/// A room route answers requests that are not WebSocket upgrades with the reason, before
/// any session exists.
#[tokio::test]
async fn plain_http_to_a_room_route_is_told_what_it_needs() {
    let relay = Relay::start().await;
    let (status, body) = http_get(&relay, "/v1/rooms/notes", &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains("only accepts WebSocket"), "{body}");
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let (status, body) = http_get(
        &relay,
        "/v1/rooms/notes",
        &[upgrade.as_slice(), &["Sec-WebSocket-Version: 8"]].concat(),
    )
    .await;
    assert_eq!(status, 426);
    assert!(body.contains("version 13"), "{body}");
    let (status, body) = http_get(
        &relay,
        "/v1/rooms/notes",
        &[&upgrade[..2], &["Sec-WebSocket-Version: 13"]].concat(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
    relay.shutdown().await;
}

/// A node over the payload limit the relay announced is never sent: its push fails at once with
/// the size and the limit, and it leaves the replica.
#[tokio::test]
async fn a_node_over_the_announced_limits_fails_its_push_without_being_sent() {
    let mut config = ServerConfig::default();
    config.rooms.hub.session.limits.max_frame = 64 * 1024;
    config.rooms.hub.session.limits.node.max_payload = 1024;
    let relay = Relay::start_with(config).await;
    let (client, _events) = synced_client(&relay, "limits").await;
    let pushed = tokio::time::timeout(PATIENCE, client.push("big", vec![1u8; 2048]))
        .await
        .expect("the push answers in time");
    let Err(PushError::TooLarge(over)) = pushed else {
        panic!("expected TooLarge, got {pushed:?}");
    };
    assert_eq!(
        over,
        OverLimit {
            limit: SizeLimit::Payload,
            size: 2048,
            max: 1024
        }
    );
    assert!(
        PushError::TooLarge(over)
            .to_string()
            .starts_with("payload is 2.0 KiB; this relay accepts at most 1 KiB per node")
    );
    assert_eq!(client.with_replica(|r| r.len()), 0);
    // Nothing reached the relay, and the client goes on working.
    client.push("small", vec![1u8; 100]).await.unwrap();
    let mut raw = Raw::connect(&relay, "limits").await;
    let held = raw.join_and_catch_up().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].path, "small");
    relay.shutdown().await;
}

/// A proxy in front of `upstream` that passes frames both ways but closes a connection with
/// 1009 when the client sends a frame over `limit` bytes: a middlebox with a smaller frame
/// limit than the relay announces. Returns its address and how many connections it took.
async fn strict_proxy(
    upstream: std::net::SocketAddr,
    limit: usize,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut path = String::new();
                // The callback's signature, error type included, is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback =
                    |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                     response| {
                        path = request.uri().path().to_owned();
                        Ok(response)
                    };
                let Ok(mut client) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                else {
                    return;
                };
                let url = format!("ws://{upstream}{path}");
                let Ok((mut relay, _)) = tokio_tungstenite::connect_async(url).await else {
                    return;
                };
                loop {
                    tokio::select! {
                        Some(Ok(message)) = client.next() => {
                            if message.len() > limit {
                                let close = CloseFrame {
                                    code: 1009.into(),
                                    reason: "message too big".into(),
                                };
                                let _ = client.send(WsMessage::Close(Some(close))).await;
                                return;
                            }
                            if relay.send(message).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(message)) = relay.next() => {
                            if client.send(message).await.is_err() {
                                return;
                            }
                        }
                        else => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A relay (here: a proxy in front of it) that closes the connection every time a node's frame
/// is sent makes the client back off and then fail that push with the reason, instead of
/// resending the frame forever; the client goes on working.
#[tokio::test]
async fn a_node_the_relay_keeps_closing_on_fails_its_push_with_the_reason() {
    let relay = Relay::start().await;
    let (proxy, connections) = strict_proxy(relay.addr, 4096).await;
    let mut config = ClientConfig::new(format!("ws://{proxy}"), room("closing"));
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    let (client, _events) = Client::start(config).unwrap();
    tokio::time::timeout(PATIENCE, client.wait_synced())
        .await
        .expect("client syncs in time")
        .unwrap();
    let pushed = tokio::time::timeout(PATIENCE, client.push("big", vec![1u8; 8192]))
        .await
        .expect("the push gives up in time");
    let Err(PushError::GaveUp { reason }) = pushed else {
        panic!("expected GaveUp, got {pushed:?}");
    };
    assert_eq!(reason, "closed 1009: message too big");
    // One connection per attempt: the first, and the two retries that hit the same close.
    assert!(
        connections.load(Ordering::SeqCst) >= weft::client::GIVE_UP_AFTER as usize,
        "{connections:?}"
    );
    assert_eq!(client.with_replica(|r| r.len()), 0);
    let small = tokio::time::timeout(PATIENCE, client.push("small", vec![1u8; 100]))
        .await
        .expect("a small push is acked in time");
    assert!(small.is_ok(), "{small:?}");
    relay.shutdown().await;
}

/// A stand-in relay that answers `hello` with an in-sync `welcome` and then never sends
/// another byte, while it goes on reading (and dropping) whatever the client writes.
async fn silent_relay() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Some(Ok(WsMessage::Binary(_hello))) = ws.next().await else {
                    return;
                };
                let welcome = Message::Welcome(Welcome {
                    version: weft::protocol::PROTOCOL_VERSION,
                    capabilities: weft::protocol::Capabilities::SUPPORTED,
                    peer: 1,
                    epoch: 1,
                    seq: 0,
                    plan: Plan::InSync,
                    limits: None,
                })
                .encode()
                .unwrap();
                if ws.send(WsMessage::Binary(welcome)).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

/// The idle timeout measures silence from the relay: an application that keeps pushing and
/// setting its presence (each a local command to the driver) must not keep a dead connection
/// alive. The relay here falls silent after `welcome`; the client has to give the connection
/// up while the pushes are still going on.
#[tokio::test]
async fn local_commands_do_not_keep_a_silent_relay_alive() {
    let addr = silent_relay().await;
    let mut config = ClientConfig::new(format!("ws://{addr}"), room("quiet"));
    config.idle_timeout = Duration::from_millis(400);
    let (client, mut events) = Client::start(config).unwrap();
    tokio::time::timeout(PATIENCE, client.wait_synced())
        .await
        .expect("client syncs in time")
        .unwrap();
    let client = Arc::new(client);
    let mut lost = None;
    // 100 rounds of 40 ms: ten times the idle timeout, with a local command every 40 ms.
    'rounds: for round in 0..100 {
        let pusher = client.clone();
        // Never acked by this relay, so the push is not awaited.
        tokio::spawn(async move { pusher.push("doc", format!("edit {round}")).await });
        client.set_presence(format!("typing {round}")).unwrap();
        let tick = tokio::time::sleep(Duration::from_millis(40));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = &mut tick => break,
                event = events.recv() => match event {
                    Some(Event::Disconnected { reason, .. }) => {
                        lost = Some((round, reason));
                        break 'rounds;
                    }
                    Some(_) => {}
                    None => panic!("the client stopped"),
                },
            }
        }
    }
    let Some((round, reason)) = lost else {
        panic!("the client kept a silent relay's connection through 4 s of local commands");
    };
    assert_eq!(reason, "relay silent for too long");
    assert!(
        round > 0,
        "the connection was lost before any command was sent"
    );
}

/// The library keeps retrying a relay that is not there, and says why in a form a program can
/// act on; a URL that is not a WebSocket URL is refused at start.
#[tokio::test]
async fn connection_failures_are_typed_and_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut config = ClientConfig::new(format!("ws://{addr}"), room("gone"));
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(20);
    let (client, mut events) = Client::start(config).unwrap();
    for _ in 0..3 {
        let event = tokio::time::timeout(PATIENCE, events.recv()).await.unwrap();
        let Some(Event::Disconnected { reason, kind }) = event else {
            panic!("expected a refused attempt, got {event:?}");
        };
        assert_eq!(kind, DisconnectKind::Refused);
        assert!(kind.is_setup_error());
        assert_eq!(reason, "connection refused");
    }
    client.close().await.unwrap();

    let relay = Relay::start().await;
    let mut config = ClientConfig::new(format!("{}/elsewhere", relay.url()), room("r"));
    config.backoff_min = Duration::from_millis(10);
    let (client, mut events) = Client::start(config).unwrap();
    let event = tokio::time::timeout(PATIENCE, events.recv()).await.unwrap();
    assert!(
        matches!(
            event,
            Some(Event::Disconnected {
                kind: DisconnectKind::Http(404),
                ..
            })
        ),
        "{event:?}"
    );
    client.close().await.unwrap();
    relay.shutdown().await;

    let refused = Client::start(ClientConfig::new("http://127.0.0.1:7788", room("r")));
    let Err(error) = refused else {
        panic!("an http:// URL must be refused");
    };
    assert_eq!(
        error.to_string(),
        "relay URL \"http://127.0.0.1:7788\" is an HTTP URL; the relay speaks WebSocket: write ws://127.0.0.1:7788"
    );
}

#[tokio::test]
async fn invalid_room_id_is_refused_before_upgrade() {
    let relay = Relay::start().await;
    for bad in ["bad%20room", "a%2Fb", "%FF", "x%"] {
        match tokio_tungstenite::connect_async(relay.room_url(bad)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{bad}");
            }
            other => panic!("{bad}: expected HTTP 400, got {other:?}"),
        }
    }
    relay.shutdown().await;
}

/// The path segment is percent-decoded before it is checked: `%61bc` is room `abc`, the same
/// room, not another one (protocol/README.md §1).
#[tokio::test]
async fn an_encoded_room_id_names_the_same_room() {
    let relay = Relay::start().await;
    let mut writer = Raw::connect(&relay, "abc").await;
    writer.join_and_catch_up().await;
    let n = node("abc", &[], "doc", "hello");
    writer
        .send(Message::Pack(Pack {
            number: 1,
            nodes: vec![n.clone()],
        }))
        .await;
    assert!(matches!(writer.recv().await, Message::Ack(_)));
    let mut reader = Raw::connect(&relay, "%61bc").await;
    assert_eq!(reader.join_and_catch_up().await, vec![n]);
    relay.shutdown().await;
}

#[tokio::test]
async fn catch_up_respects_credit_and_frame_size() {
    let mut config = ServerConfig::default();
    config.rooms.hub.session.limits.max_frame = 16 * 1024;
    let relay = Relay::start_with(config).await;
    let mut writer = Raw::connect(&relay, "credit").await;
    writer.join_and_catch_up().await;
    let mut nodes = Vec::new();
    let mut parent: Option<weft::node::Node> = None;
    for i in 0..200 {
        let n = node(
            "credit",
            &parent.iter().collect::<Vec<_>>(),
            &format!("n/{i}"),
            &"x".repeat(500),
        );
        nodes.push(n.clone());
        parent = Some(n);
    }
    for chunk in nodes.chunks(20) {
        writer
            .send(Message::Pack(Pack {
                number: 1,
                nodes: chunk.to_vec(),
            }))
            .await;
        assert!(matches!(writer.recv().await, Message::Ack(_)));
    }
    // Credit for a single small frame at a time: the relay must wait for grants.
    let mut reader = Raw::connect(&relay, "credit").await;
    let mut h = hello(Default::default());
    h.credit = 1;
    reader.send(Message::Hello(h)).await;
    assert!(matches!(
        reader.recv().await,
        Message::Welcome(Welcome { .. })
    ));
    let mut received = Vec::new();
    let mut last_through = 0;
    loop {
        match reader.recv_sized().await {
            (Message::Batch(Batch { through, nodes }), len) => {
                assert!(through > last_through, "resume point advances");
                last_through = through;
                received.extend(nodes);
                // Nothing more may arrive until we grant credit again.
                let quiet = tokio::time::timeout(Duration::from_millis(50), async {
                    loop {
                        match reader.socket.next().await {
                            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                            other => return other,
                        }
                    }
                })
                .await;
                assert!(quiet.is_err(), "relay sent beyond its credit: {quiet:?}");
                // The batch overdrew the byte of credit; granting its size (what the client
                // consumed) buys the next one.
                reader.send(Message::Credit(Credit { bytes: len })).await;
            }
            (Message::CatchUpDone(CatchUpDone { seq, .. }), _) => {
                assert_eq!(seq, 200);
                break;
            }
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        received, nodes,
        "all nodes, in arrival order, parents first"
    );
    relay.shutdown().await;
}

/// A client that grants the relay's credit cap and then credits each batch's size as it
/// consumes it (§6.2) catches up a room of mixed node sizes, from 10 B to the payload limit,
/// without ever overflowing the relay's real (default) outbound queue, however slowly it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_honest_catch_up_of_mixed_sizes_never_overflows_the_queue() {
    let config = ServerConfig::default();
    let max_payload = config.rooms.hub.session.limits.node.max_payload as usize;
    let max_frame = config.rooms.hub.session.limits.max_frame as usize;
    let window = config.rooms.hub.session.max_credit;
    let relay = Relay::start_with(config).await;
    let mut writer = Raw::connect(&relay, "mixed").await;
    writer.join_and_catch_up().await;
    // About 60 MB in sizes drawn from every order of magnitude, so batch sizes vary (a client
    // crediting each batch then returns less than the next batch costs, and more).
    let mut rng = StdRng::seed_from_u64(12);
    let sizes = [10, 700, 9_000, 60_000, 150_000, max_payload - 16];
    let mut nodes = Vec::new();
    let mut parent: Option<weft::node::Node> = None;
    for i in 0..600 {
        let size = sizes[rng.random_range(0..sizes.len())];
        let n = node(
            "mixed",
            &parent.iter().collect::<Vec<_>>(),
            &format!("m/{i}"),
            &"q".repeat(size),
        );
        nodes.push(n.clone());
        parent = Some(n);
    }
    let mut pack = Vec::new();
    let mut pack_bytes = 0;
    for (number, n) in nodes.iter().enumerate() {
        let len = n.wire_size_bound();
        if pack_bytes + len > max_frame / 2 {
            let nodes = std::mem::take(&mut pack);
            writer
                .send(Message::Pack(Pack {
                    number: number as u64,
                    nodes,
                }))
                .await;
            assert!(matches!(writer.recv().await, Message::Ack(_)));
            pack_bytes = 0;
        }
        pack.push(n.clone());
        pack_bytes += len;
    }
    writer
        .send(Message::Pack(Pack {
            number: 1_000,
            nodes: pack,
        }))
        .await;
    assert!(matches!(writer.recv().await, Message::Ack(_)));

    let mut reader = Raw::connect(&relay, "mixed").await;
    let mut h = hello(Default::default());
    h.credit = window;
    reader.send(Message::Hello(h)).await;
    assert!(matches!(reader.recv().await, Message::Welcome(_)));
    let mut received = Vec::new();
    loop {
        match reader.next_sized_frame().await {
            Ok((Message::Batch(batch), len)) => {
                received.extend(batch.nodes);
                // A slow consumer: the relay fills its queue with everything the credit allows.
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert_eq!(
                    relay.stats.queues.overflows.load(Ordering::Relaxed),
                    0,
                    "the outbound queue overflowed during an honest catch-up"
                );
                reader.send(Message::Credit(Credit { bytes: len })).await;
            }
            Ok((Message::CatchUpDone(done), _)) => {
                assert_eq!(done.seq, nodes.len() as u64);
                break;
            }
            Ok((other, _)) => panic!("unexpected {other:?}"),
            Err(code) => panic!("closed with {code:?} during an honest catch-up"),
        }
    }
    assert_eq!(received, nodes);
    assert_eq!(relay.stats.queues.overflows.load(Ordering::Relaxed), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn presence_reaches_peers_and_late_joiners_and_leave_clears_it() {
    let relay = Relay::start().await;
    let mut alice = Raw::connect(&relay, "here").await;
    let alice_peer = alice.join_empty().await.peer;
    alice
        .send(Message::Presence(Presence {
            state: Bytes::from_static(b"cursor 1"),
        }))
        .await;
    // Bob joins late and still learns alice's state.
    let mut bob = Raw::connect(&relay, "here").await;
    bob.join_empty().await;
    let Message::PresenceUpdate(update) = bob.recv().await else {
        panic!("expected presence")
    };
    assert_eq!(
        update,
        PresenceUpdate {
            peer: alice_peer,
            state: Bytes::from_static(b"cursor 1")
        }
    );
    alice.socket.close(None).await.unwrap();
    let Message::PresenceUpdate(update) = bob.recv().await else {
        panic!("expected leave")
    };
    assert_eq!(
        update,
        PresenceUpdate {
            peer: alice_peer,
            state: Bytes::new()
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn client_library_presence_round_trip() {
    let relay = Relay::start().await;
    let (alice, _) = synced_client(&relay, "pres").await;
    let (_bob, mut bob_events) = synced_client(&relay, "pres").await;
    alice.set_presence("typing").unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, bob_events.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Presence { state, .. } = event {
            assert_eq!(state, Bytes::from_static(b"typing"));
            break;
        }
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_is_closed_with_resync_and_memory_stays_bounded() {
    const LIMIT: usize = 256 * 1024;
    let mut config = ServerConfig::default();
    config.connection.queue_limit = LIMIT;
    let relay = Relay::start_with(config).await;
    let mut stalled = Raw::connect(&relay, "flood").await;
    stalled.join_and_catch_up().await;
    let mut writer = Raw::connect(&relay, "flood").await;
    writer.join_and_catch_up().await;

    // Flood until the relay gives up on the stalled reader. Kernel socket buffers absorb the
    // first few megabytes, so keep writing (bounded) until the overflow is observed.
    let payload = "z".repeat(16 * 1024);
    let mut max_queued = 0usize;
    let mut number = 0u64;
    while relay.stats.queues.overflows.load(Ordering::Relaxed) == 0 {
        number += 1;
        assert!(number < 20_000, "relay never closed the stalled reader");
        let nodes = (0..32)
            .map(|i| node("flood", &[], &format!("f/{number}/{i}"), &payload))
            .collect();
        writer.send(Message::Pack(Pack { number, nodes })).await;
        assert!(matches!(writer.recv().await, Message::Ack(_)));
        max_queued = max_queued.max(relay.stats.queues.queued_bytes.load(Ordering::Relaxed));
    }
    // Two connections, each bounded by the queue limit (plus one frame in the writer's hands).
    assert!(
        max_queued <= 2 * LIMIT + 1024 * 1024,
        "queued {max_queued} bytes"
    );
    // The stalled reader finally reads: whatever was queued, then the typed close.
    assert_eq!(
        stalled.closed().await,
        Some(CloseCode::ResyncRequired.code())
    );
    // The writer was never affected.
    writer
        .send(Message::Pack(Pack {
            number: number + 1,
            nodes: vec![node("flood", &[], "last", "x")],
        }))
        .await;
    assert!(matches!(writer.recv().await, Message::Ack(_)));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_reader_is_closed_with_resync_before_its_queue_fills() {
    let mut config = ServerConfig::default();
    config.connection.queue_limit = 256 * 1024 * 1024;
    config.connection.max_lag = Duration::from_millis(100);
    let relay = Relay::start_with(config).await;
    let mut slow = Raw::connect(&relay, "lag").await;
    slow.join_and_catch_up().await;
    let mut writer = Raw::connect(&relay, "lag").await;
    writer.join_and_catch_up().await;
    // Write until frames wait in the relay's queue for the reader that is not reading
    // (kernel buffers absorb the first megabytes), then let them age past the limit.
    let payload = "z".repeat(16 * 1024);
    let mut number = 0u64;
    while relay.stats.queues.queued_bytes.load(Ordering::Relaxed) < 1024 * 1024 {
        number += 1;
        assert!(number < 20_000, "frames never queued up");
        let nodes = (0..32)
            .map(|i| node("lag", &[], &format!("l/{number}/{i}"), &payload))
            .collect();
        writer.send(Message::Pack(Pack { number, nodes })).await;
        assert!(matches!(writer.recv().await, Message::Ack(_)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slow.closed().await, Some(CloseCode::ResyncRequired.code()));
    assert_eq!(
        relay.stats.queues.overflows.load(Ordering::Relaxed),
        0,
        "closed for lag, not bytes"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_sessions_with_going_away() {
    let relay = Relay::start().await;
    let mut raw = Raw::connect(&relay, "bye").await;
    raw.join_and_catch_up().await;
    let stats = relay.stats.clone();
    let shutdown = tokio::spawn(relay.shutdown());
    assert_eq!(raw.closed().await, Some(CloseCode::GoingAway.code()));
    shutdown.await.unwrap();
    assert_eq!(stats.connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn concurrent_first_connects_share_one_room() {
    let relay = Relay::start().await;
    let mut joins = Vec::new();
    for i in 0..16 {
        let url = relay.room_url("cold");
        joins.push(tokio::spawn(async move {
            let mut raw = Raw::connect_url(&url).await;
            raw.join_and_catch_up().await;
            let n = node("cold", &[], &format!("p/{i}"), "x");
            raw.send(Message::Pack(Pack {
                number: 1,
                nodes: vec![n],
            }))
            .await;
            loop {
                if let Message::Ack(ack) = raw.recv().await {
                    return ack.outcomes;
                }
            }
        }));
    }
    let mut seqs = BTreeSet::new();
    for join in joins {
        let outcomes = join.await.unwrap();
        let [Outcome::Accepted(seq)] = outcomes[..] else {
            panic!("expected accepted, got {outcomes:?}")
        };
        seqs.insert(seq);
    }
    // One room, one numbering: 16 distinct consecutive arrival numbers.
    assert_eq!(seqs, (1..=16).collect());
    relay.shutdown().await;
}

/// Issue 3's end-to-end case: a client that has never synced with this relay holds a large
/// room's history minus 500 nodes plus 500 of its own (d = 1,000, scattered over the id space).
/// It reconciles by sketch over real WebSocket and both sides end with the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_differences_against_a_large_room_converge_by_sketch() {
    const SHARED: usize = 20_000;
    const EACH_SIDE: usize = 500;
    let name = "sketch-e2e";
    // Four writer chains, then nodes forking off scattered shared nodes on each side.
    let mut shared = Vec::with_capacity(SHARED);
    for i in 0..SHARED {
        let parent = i.checked_sub(4).map(|p| &shared[p]);
        let parents: Vec<&weft::node::Node> = parent.into_iter().collect();
        shared.push(node(name, &parents, "doc/body", &format!("shared {i}")));
    }
    let fork = |side: &str, i: usize| {
        let base = &shared[(i * 7_919) % SHARED];
        node(name, &[base], "doc/title", &format!("{side} {i}"))
    };
    let relay_only: Vec<_> = (0..EACH_SIDE).map(|i| fork("relay", i)).collect();
    let client_only: Vec<_> = (0..EACH_SIDE).map(|i| fork("client", i)).collect();

    let store = Arc::new(PackStore::memory());
    let mut history = shared.clone();
    history.extend(relay_only.iter().cloned());
    store.append_nodes(&room(name), 1, &history).await.unwrap();
    let relay = Relay::start_with_store(ServerConfig::default(), store).await;

    let mut replica = Replica::new(room(name));
    for n in shared.iter().chain(&client_only) {
        replica.insert(n.clone(), false).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("weft-sketch-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("replica");
    std::fs::write(&file, replica.to_bytes().unwrap()).unwrap();

    let mut config = ClientConfig::new(relay.url(), room(name));
    config.replica_file = Some(file);
    let (client, mut events) = Client::start(config).unwrap();
    let mut plans = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.recv().await {
            match event {
                Event::Reconciling { plan } => plans.push(plan),
                Event::Synced { .. } => break,
                _ => {}
            }
        }
    })
    .await
    .expect("client syncs in time");
    assert_eq!(plans, vec![Plan::Sketch], "one sketch, no fallback");

    let union: BTreeSet<NodeId> = shared
        .iter()
        .chain(&relay_only)
        .chain(&client_only)
        .map(|n| n.id)
        .collect();
    assert_eq!(ids_of(&client), union);
    // The client's own nodes reach the relay: a fresh client catches up to the union.
    eventually("the client's nodes are all acknowledged", || {
        client.with_replica(|r| r.unsynced().count() == 0)
    })
    .await;
    let mut fresh = Raw::connect(&relay, name).await;
    let caught_up: BTreeSet<NodeId> = fresh
        .join_and_catch_up()
        .await
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(caught_up, union);
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    relay.shutdown().await;
}
