//! Path-pattern subscriptions over real WebSocket (protocol/README.md §7.5): filtered
//! catch-up and broadcast, reconnecting with a subscription after offline work, and backfill
//! after a subscription change. Clients use the client library against a relay on 127.0.0.1.

mod net;

use std::collections::BTreeSet;
use std::time::Duration;

use net::*;
use weft::client::{Client, ClientConfig, Event};
use weft::node::NodeId;
use weft::protocol::Plan;
use weft::replica::Replica;

fn ids_of(client: &Client) -> BTreeSet<NodeId> {
    client.with_replica(|r| r.ids().copied().collect())
}

/// Ids of the nodes in `writer`'s replica (the whole room) whose path starts with a prefix.
fn room_ids(writer: &Client, prefixes: &[&str]) -> BTreeSet<NodeId> {
    writer.with_replica(|r| {
        r.nodes()
            .filter(|n| prefixes.iter().any(|p| n.path.starts_with(p)))
            .map(|n| n.id)
            .collect()
    })
}

fn config(relay: &Relay, room_name: &str, subscribe: &[&str]) -> ClientConfig {
    let mut config = ClientConfig::new(relay.url(), room(room_name));
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.subscribe = Some(subscribe.iter().map(|p| (*p).to_owned()).collect());
    config
}

async fn write_mixed(writer: &Client, tag: &str, n: usize) {
    for i in 0..n {
        let path = ["docs/guide", "notes/today", "misc/x", "docs/api/v1"][i % 4];
        writer.push(path, format!("{tag} {i}")).await.unwrap();
    }
}

/// A writer that wrote `n` mixed nodes to `room_name`, and a `docs/**` subscriber that synced
/// them into a replica file in `dir` and closed: its config and file.
async fn synced_subscriber_file(
    relay: &Relay,
    room_name: &str,
    n: usize,
    dir: &tempfile::TempDir,
) -> (Client, ClientConfig, std::path::PathBuf) {
    let file = dir.path().join("replica");
    let (writer, _) = synced_client(relay, room_name).await;
    write_mixed(&writer, "first", n).await;
    let mut cfg = config(relay, room_name, &["docs/**"]);
    cfg.replica_file = Some(file.clone());
    let (client, _) = Client::start(cfg.clone()).unwrap();
    client.wait_synced().await.unwrap();
    client.close().await.unwrap();
    (writer, cfg, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_broadcast_carry_only_matching_nodes() {
    let relay = Relay::start().await;
    let r = "filtered";
    let (writer, _) = synced_client(&relay, r).await;
    write_mixed(&writer, "before", 40).await;

    let (reader, mut events) = Client::start(config(&relay, r, &["docs/**"])).unwrap();
    tokio::time::timeout(PATIENCE, reader.wait_synced())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&reader), room_ids(&writer, &["docs/"]));
    assert_eq!(ids_of(&reader).len(), 20);

    // Live: only the docs nodes arrive.
    write_mixed(&writer, "after", 8).await;
    let expected = room_ids(&writer, &["docs/"]);
    eventually("the reader holds the new docs nodes", || {
        ids_of(&reader) == expected
    })
    .await;
    // Nothing else arrived either: drain the events and check every node's path.
    while let Ok(event) = events.try_recv() {
        if let Event::Node(node) = event {
            assert!(node.path.starts_with("docs/"), "received {}", node.path);
        }
    }
    // A whole-room client still gets everything.
    let (all, _) = synced_client(&relay, r).await;
    assert_eq!(ids_of(&all).len(), 48);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_a_subscription_after_offline_work_converges_on_the_subset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replica");
    let relay = Relay::start().await;
    let r = "offline-subset";
    let (writer, _) = synced_client(&relay, r).await;
    write_mixed(&writer, "first", 12).await;

    let mut cfg = config(&relay, r, &["docs/**", "notes/*"]);
    cfg.replica_file = Some(file.clone());
    let (client, _) = Client::start(cfg.clone()).unwrap();
    client.wait_synced().await.unwrap();
    assert_eq!(ids_of(&client), room_ids(&writer, &["docs/", "notes/"]));
    client.close().await.unwrap();

    // Both sides write meanwhile: the room gets more of everything, the subscriber writes two
    // docs nodes offline (on top of heads whose parents it never held).
    write_mixed(&writer, "second", 12).await;
    let mut replica = Replica::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    let offline: Vec<NodeId> = (0..2)
        .map(|i| {
            replica
                .create("docs/offline", format!("offline {i}"))
                .unwrap()
        })
        .collect();
    std::fs::write(&file, replica.to_bytes().unwrap()).unwrap();

    let (back, _) = Client::start(cfg).unwrap();
    back.wait_synced().await.unwrap();
    eventually("the offline nodes reach the writer", || {
        offline
            .iter()
            .all(|id| writer.with_replica(|w| w.contains(id)))
    })
    .await;
    let expected = room_ids(&writer, &["docs/", "notes/"]);
    eventually("the subscriber holds exactly the subset", || {
        ids_of(&back) == expected
    })
    .await;
    assert!(
        offline
            .iter()
            .all(|id| back.with_replica(|r| r.is_synced(id)))
    );
    back.close().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_mid_session_backfills_then_streams_the_new_paths() {
    let relay = Relay::start().await;
    let r = "backfill";
    let (writer, _) = synced_client(&relay, r).await;
    write_mixed(&writer, "history", 40).await;
    let (reader, _) = Client::start(config(&relay, r, &["docs/**"])).unwrap();
    reader.wait_synced().await.unwrap();
    assert_eq!(ids_of(&reader), room_ids(&writer, &["docs/"]));

    let now = tokio::time::timeout(PATIENCE, reader.subscribe(&["notes/**".to_owned()]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now, vec!["docs/**", "notes/**"]);
    // When `subscribe` returns, the backfill is complete.
    assert_eq!(ids_of(&reader), room_ids(&writer, &["docs/", "notes/"]));
    write_mixed(&writer, "live", 8).await;
    let expected = room_ids(&writer, &["docs/", "notes/"]);
    eventually("live notes arrive too", || ids_of(&reader) == expected).await;

    // Unsubscribing stops them; what is held stays.
    let now = reader.unsubscribe(&["notes/**".to_owned()]).await.unwrap();
    assert_eq!(now, vec!["docs/**"]);
    let held = ids_of(&reader).len();
    writer.push("notes/late", "late").await.unwrap();
    let docs = writer.push("docs/late", "late").await.unwrap();
    eventually("the docs node arrives", || {
        reader.with_replica(|r| r.contains(&docs))
    })
    .await;
    assert_eq!(ids_of(&reader).len(), held + 1);
    // A bad pattern is refused before anything is sent.
    assert!(reader.subscribe(&["a//b".to_owned()]).await.is_err());
    relay.shutdown().await;
}

/// A subscribed client whose watermark is current but that wrote offline is not "in sync":
/// its offline node still reaches the relay and is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_are_pushed_even_when_nothing_new_matches() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start().await;
    let (writer, cfg, file) = synced_subscriber_file(&relay, "offline-only", 8, &dir).await;

    let mut replica = Replica::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    let offline = replica.create("docs/offline", "written offline").unwrap();
    std::fs::write(&file, replica.to_bytes().unwrap()).unwrap();
    let (back, _) = Client::start(cfg).unwrap();
    back.wait_synced().await.unwrap();
    eventually("the offline node is acked", || {
        back.with_replica(|r| r.is_synced(&offline))
    })
    .await;
    eventually("the writer has it", || {
        writer.with_replica(|w| w.contains(&offline))
    })
    .await;
    back.close().await.unwrap();
    relay.shutdown().await;
}

/// A client that changed its subscription offline has no watermark for the new one: it
/// reconciles the nodes it holds that match by sketch or refinement against the relay's class
/// (no id list), receives exactly what it lacks, and its own writes at other paths still reach
/// the room and are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_changed_offline_reconciles_the_new_subset_by_sketch() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start().await;
    let (writer, mut cfg, file) = synced_subscriber_file(&relay, "rescoped", 200, &dir).await;

    write_mixed(&writer, "second", 8).await;
    let mut replica = Replica::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    let outside = replica.create("misc/mine", "not subscribed").unwrap();
    let inside = replica.create("docs/offline", "subscribed").unwrap();
    let wider =
        weft::replica::read_subscription(&["docs/**".into(), "notes/today".into()]).unwrap();
    replica.set_subscription(Some(wider.clone()));
    assert!(replica.watermark().is_none());
    std::fs::write(&file, replica.to_bytes().unwrap()).unwrap();

    cfg.subscribe = Some(wider.canonical());
    let (back, mut events) = Client::start(cfg.clone()).unwrap();
    let plan = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Some(Event::Reconciling { plan }) => break plan,
                Some(_) => {}
                None => panic!("client ended"),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(plan, Plan::Sketch | Plan::Refine),
        "planned {plan:?}"
    );
    back.wait_synced().await.unwrap();
    eventually("the offline nodes reach the writer", || {
        writer.with_replica(|w| w.contains(&outside) && w.contains(&inside))
    })
    .await;
    let mut expected = room_ids(&writer, &["docs/", "notes/today"]);
    expected.insert(outside);
    eventually(
        "the subscriber holds the new subset and its own nodes",
        || ids_of(&back) == expected,
    )
    .await;
    eventually("its own nodes are acked", || {
        back.with_replica(|r| r.is_synced(&outside) && r.is_synced(&inside))
    })
    .await;
    assert_eq!(
        back.with_replica(|r| r.subscription().cloned()),
        Some(wider)
    );
    back.close().await.unwrap();

    // Later connections catch up from the watermark and verify against the class's digest,
    // which the node written outside the subscription is no part of: no divergence, so no
    // second reconciliation.
    write_mixed(&writer, "third", 8).await;
    let (again, mut events) = Client::start(cfg).unwrap();
    let plans = tokio::time::timeout(PATIENCE, async {
        let mut plans = Vec::new();
        loop {
            match events.recv().await {
                Some(Event::Reconciling { plan }) => plans.push(plan),
                Some(Event::Synced { .. }) => break plans,
                Some(_) => {}
                None => panic!("client ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(plans, vec![Plan::CatchUp]);
    let expected = room_ids(&writer, &["docs/", "notes/today"]);
    eventually("the subscriber holds the new matching nodes", || {
        expected.is_subset(&ids_of(&again))
    })
    .await;
    again.close().await.unwrap();
    relay.shutdown().await;
}
