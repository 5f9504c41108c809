//! Durability over real WebSocket: no ack without a successful store write, typed errors and
//! recovery when the store fails (errors, torn and partial writes), group commit, and one load
//! for concurrent first connects. The relay runs on a fault-injecting object store.

mod faults;
mod net;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use faults::{Faults, Faulty};
use futures::future::BoxFuture;
use net::{PATIENCE, Raw, RawEvent, Relay, http_get, node, room};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use weft::node::{Node, NodeId};
use weft::protocol::{CloseCode, ErrorCode, Message, Outcome, Pack};
use weft::server::ServerConfig;
use weft::store::{PackStore, RoomReader, Store, StoreError, StoreReport};

/// A relay over a faulty in-memory object store; also returns the underlying objects and the
/// fault switches.
async fn faulty_relay() -> (Relay, Arc<dyn ObjectStore>, Arc<Faults>) {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let store = faulty_store(&objects, &faults);
    let relay = Relay::start_with_store(ServerConfig::default(), Arc::new(store)).await;
    (relay, objects, faults)
}

fn faulty_store(objects: &Arc<dyn ObjectStore>, faults: &Arc<Faults>) -> PackStore {
    let faulty = Faulty {
        inner: objects.clone(),
        faults: faults.clone(),
    };
    PackStore::new(Arc::new(faulty), Path::from("relay"), "faulty".into())
}

/// The ids stored for `room_name`, as a relay starting now would load them.
async fn stored_ids(objects: &Arc<dyn ObjectStore>, room_name: &str) -> Vec<NodeId> {
    let store = PackStore::new(objects.clone(), Path::from("relay"), "check".into());
    match store.load(&room(room_name)).await.unwrap() {
        Some(stored) => stored.nodes.iter().map(|n| n.id).collect(),
        None => Vec::new(),
    }
}

/// Pushes one pack of `nodes` and returns the relay's answer: the ack's outcomes, or the
/// error code and close code if the relay gave up.
async fn push(client: &mut Raw, number: u64, nodes: Vec<Node>) -> Result<Vec<Outcome>, Failure> {
    client.send(Message::Pack(Pack { number, nodes })).await;
    let mut error = None;
    loop {
        match client.next_event().await {
            RawEvent::Frame(Message::Ack(ack)) => {
                assert_eq!(ack.number, number);
                return Ok(ack.outcomes);
            }
            RawEvent::Frame(Message::ErrorMessage(e)) => error = Some(e.code),
            RawEvent::Frame(_) => {}
            RawEvent::Closed(close) => return Err(Failure { error, close }),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Failure {
    error: Option<u16>,
    close: Option<u16>,
}

const STORE_FAILED: Failure = Failure {
    error: Some(ErrorCode::StoreUnavailable.code()),
    close: Some(CloseCode::StoreUnavailable.code()),
};

/// `GET path` on the relay; the HTTP status code.
async fn http_status(relay: &Relay, path: &str) -> u16 {
    http_get(relay, path, &[]).await.0
}

async fn steady_client(relay: &Relay, room_name: &str) -> Raw {
    let mut client = Raw::connect(relay, room_name).await;
    client.join_and_catch_up().await;
    client
}

/// For each way a write can fail: the pushed node is not acked, the client gets
/// `StoreUnavailable` and close 4006, nothing of it is stored (the room stays loadable), and
/// once the store works again the same push is acked and stored. `/readyz` says 503 while
/// its own probe write fails, and 200 again after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_without_a_durable_write_and_recovery_after() {
    let (relay, objects, faults) = faulty_relay().await;
    let r = "durable";
    let mut client = steady_client(&relay, r).await;
    let first = node(r, &[], "doc", "first");
    let outcomes = push(&mut client, 1, vec![first.clone()]).await.unwrap();
    assert!(matches!(outcomes.as_slice(), [Outcome::Accepted(1)]));
    assert_eq!(stored_ids(&objects, r).await, vec![first.id]);
    assert_eq!(http_status(&relay, "/readyz").await, 200);

    let switches = [("write errors", &faults.fail_writes)];
    let mut parent = first;
    for (number, (what, switch)) in (2u64..).zip(switches) {
        Faults::set(switch, true);
        let next = node(r, &[&parent], "doc", what);
        let answer = push(&mut client, number, vec![next.clone()]).await;
        assert_eq!(answer, Err(STORE_FAILED), "{what}");
        if switch.load(Ordering::SeqCst) && std::ptr::eq(switch, &faults.fail_writes) {
            assert_eq!(http_status(&relay, "/readyz").await, 503, "{what}");
        }
        assert!(
            !stored_ids(&objects, r).await.contains(&next.id),
            "{what}: an unacked node must not count as stored"
        );

        Faults::set(switch, false);
        client = steady_client(&relay, r).await;
        let outcomes = push(&mut client, number, vec![next.clone()]).await.unwrap();
        assert!(
            matches!(outcomes.as_slice(), [Outcome::Accepted(_)]),
            "{what}: {outcomes:?}"
        );
        assert!(stored_ids(&objects, r).await.contains(&next.id), "{what}");
        assert_eq!(http_status(&relay, "/readyz").await, 200, "{what}");
        parent = next;
    }
    // The commit pack alone is the commit: with manifests failing, acks still come, and the
    // acked node is stored (recovered from the packs after the newest manifest).
    Faults::set(&faults.fail_manifests, true);
    let last = node(r, &[&parent], "doc", "no manifest");
    let outcomes = push(&mut client, 4, vec![last.clone()]).await.unwrap();
    assert!(
        matches!(outcomes.as_slice(), [Outcome::Accepted(_)]),
        "{outcomes:?}"
    );
    assert!(stored_ids(&objects, r).await.contains(&last.id));
    assert_eq!(stored_ids(&objects, r).await.len(), 3);
    Faults::set(&faults.fail_manifests, false);
    // A store that tears a commit pack (real ones never do: a put is atomic) gets no ack
    // either, and the torn fence is refused on load rather than served wrong.
    Faults::set(&faults.tear_packs, true);
    let torn = node(r, &[&last], "doc", "torn");
    assert_eq!(push(&mut client, 5, vec![torn]).await, Err(STORE_FAILED));
    Faults::set(&faults.tear_packs, false);
    let refused = faulty_store(&objects, &faults).load(&room(r)).await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt { .. })),
        "{refused:?}"
    );
    relay.shutdown().await;
}

/// With a slow store, an ack arrives only once its node is stored, and nodes from many
/// sessions share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_follow_the_write_and_sessions_share_commits() {
    let (relay, objects, faults) = faulty_relay().await;
    let r = "grouped";
    let root = node(r, &[], "doc", "root");
    let mut first = steady_client(&relay, r).await;
    push(&mut first, 1, vec![root.clone()]).await.unwrap();
    faults.write_latency_ms.store(40, Ordering::SeqCst);
    let before = faults.manifests_written.load(Ordering::SeqCst);
    let sessions = 16;
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let relay_url = relay.room_url(r);
        let objects = objects.clone();
        let child = node(r, &[&root], "doc", &format!("child {i}"));
        tasks.push(tokio::spawn(async move {
            let mut client = Raw::connect_url(&relay_url).await;
            client.join_and_catch_up().await;
            let outcomes = push(&mut client, 1, vec![child.clone()]).await.unwrap();
            assert!(matches!(outcomes.as_slice(), [Outcome::Accepted(_)]));
            // Acked means stored, right now.
            assert!(stored_ids(&objects, "grouped").await.contains(&child.id));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let commits = faults.manifests_written.load(Ordering::SeqCst) - before;
    assert!(
        commits < sessions / 2,
        "{commits} commits for {sessions} concurrent packs"
    );
    assert_eq!(stored_ids(&objects, r).await.len(), 1 + sessions as usize);
    relay.shutdown().await;
}

/// While a commit is in flight (a slow store), a new session is still served at once: its
/// handshake and the catch-up of what is stored finish before the writer's ack, and the node
/// being written reaches it as a broadcast once stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_does_not_wait_for_the_commit_in_flight() {
    let (relay, _objects, faults) = faulty_relay().await;
    let r = "beside";
    let stored = node(r, &[], "doc", "stored");
    let mut writer = steady_client(&relay, r).await;
    push(&mut writer, 1, vec![stored.clone()]).await.unwrap();
    // Long enough that the handshake below cannot lose the race on a busy machine.
    faults.write_latency_ms.store(3_000, Ordering::SeqCst);
    let writes_before = faults.writes_started.load(Ordering::SeqCst);
    let unstored = node(r, &[&stored], "doc", "being written");
    writer
        .send(Message::Pack(Pack {
            number: 2,
            nodes: vec![unstored.clone()],
        }))
        .await;
    // The commit must be in flight before the newcomer says hello.
    net::eventually("the commit starts", || {
        faults.writes_started.load(Ordering::SeqCst) > writes_before
    })
    .await;
    let mut newcomer = Raw::connect(&relay, r).await;
    let caught_up = newcomer.join_and_catch_up().await;
    assert_eq!(
        caught_up.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![stored.id],
        "catch-up of stored history only"
    );
    let early = tokio::time::timeout(std::time::Duration::ZERO, writer.next_event()).await;
    assert!(
        early.is_err(),
        "the handshake finished before the commit: no ack yet ({early:?})"
    );
    let outcomes = match writer.recv().await {
        Message::Ack(ack) => ack.outcomes,
        other => panic!("expected the ack, got {other:?}"),
    };
    assert!(matches!(outcomes.as_slice(), [Outcome::Accepted(2)]));
    match newcomer.recv().await {
        Message::Broadcast(b) => {
            assert_eq!(b.first_seq, 2);
            assert_eq!(b.nodes, vec![unstored]);
        }
        other => panic!("expected the stored node as a broadcast, got {other:?}"),
    }
    faults.write_latency_ms.store(0, Ordering::SeqCst);
    relay.shutdown().await;
}

/// Many clients connecting at once to a room that is not loaded yet share one load, and each
/// sees the whole room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connects_share_one_load() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let r = "cold";
    let writer = PackStore::new(objects.clone(), Path::from("relay"), "setup".into());
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..300 {
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        nodes.push(node(r, &parents, "doc", &format!("n{i}")));
        if i % 100 == 99 {
            writer
                .append_nodes(&room(r), 3, &nodes[i - 99..=i])
                .await
                .unwrap();
        }
    }
    let faults = Arc::new(Faults::default());
    faults.read_latency_ms.store(100, Ordering::SeqCst);
    let store = faulty_store(&objects, &faults);
    let relay = Relay::start_with_store(ServerConfig::default(), Arc::new(store)).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = relay.room_url(r);
        tasks.push(tokio::spawn(async move {
            let mut client = Raw::connect_url(&url).await;
            client.join_and_catch_up().await
        }));
    }
    for task in tasks {
        let seen = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        assert_eq!(seen.len(), nodes.len(), "a client saw a partial room");
        let ids: Vec<NodeId> = seen.iter().map(|n| n.id).collect();
        let expected: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, expected);
    }
    assert_eq!(
        faults.manifest_listings.load(Ordering::SeqCst),
        1,
        "one load"
    );
    relay.shutdown().await;
}

/// A room whose store cannot be read turns clients away with 4006 instead of serving an
/// empty room, and serves them once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_is_not_an_empty_room() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let r = "unreadable";
    let writer = PackStore::new(objects.clone(), Path::from("relay"), "setup".into());
    let stored = node(r, &[], "doc", "kept");
    writer
        .append_nodes(&room(r), 9, std::slice::from_ref(&stored))
        .await
        .unwrap();
    // Tear the stored pack: the load must fail, not return a room without it.
    let packs: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        objects.list(Some(&Path::from("relay/rooms/r-unreadable/packs"))),
    )
    .await;
    let pack = packs[0].as_ref().unwrap().location.clone();
    let original = objects.get(&pack).await.unwrap().bytes().await.unwrap();
    objects
        .put(&pack, original.slice(..original.len() - 3).into())
        .await
        .unwrap();
    let faults = Arc::new(Faults::default());
    let relay = Relay::start_with_store(
        ServerConfig::default(),
        Arc::new(faulty_store(&objects, &faults)),
    )
    .await;
    let mut client = Raw::connect(&relay, r).await;
    assert_eq!(
        client.closed().await,
        Some(CloseCode::StoreUnavailable.code())
    );
    // The operator restores the object; the next connection loads the room.
    objects.put(&pack, original.into()).await.unwrap();
    let mut client = Raw::connect(&relay, r).await;
    let seen = client.join_and_catch_up().await;
    assert_eq!(
        seen.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![stored.id]
    );
    // The store itself stayed reachable and writable all along.
    assert_eq!(http_status(&relay, "/readyz").await, 200);
    relay.shutdown().await;
}

/// A room without sessions is unloaded after the idle time, and the next connection loads it
/// again, whole, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_are_unloaded_and_reload_whole() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let mut config = ServerConfig::default();
    config.rooms.idle_eviction = std::time::Duration::from_millis(50);
    let relay = Relay::start_with_store(config, Arc::new(faulty_store(&objects, &faults))).await;
    let r = "idle";
    let mut client = steady_client(&relay, r).await;
    let kept = node(r, &[], "doc", "kept");
    push(&mut client, 1, vec![kept.clone()]).await.unwrap();
    assert_eq!(relay.stats.rooms.load(Ordering::SeqCst), 1);
    drop(client);
    // Bounded: up to 10 s for the room to go.
    let mut unloaded = false;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if relay.stats.rooms.load(Ordering::SeqCst) == 0 {
            unloaded = true;
            break;
        }
    }
    assert!(unloaded, "the idle room stayed loaded");
    let listings = faults.manifest_listings.load(Ordering::SeqCst);
    let mut client = Raw::connect(&relay, r).await;
    let seen = client.join_and_catch_up().await;
    assert_eq!(seen.iter().map(|n| n.id).collect::<Vec<_>>(), vec![kept.id]);
    assert_eq!(
        faults.manifest_listings.load(Ordering::SeqCst),
        listings + 1,
        "loaded again"
    );
    relay.shutdown().await;
}

/// A relay that keeps no stored encoding in memory (payload budget 0): an empty client's
/// catch-up reads every node back from the packs with ranged reads and gets the room exactly.
/// A read that fails, or returns a record that is not the node, closes only that client with
/// `StoreUnavailable` and sends it no batch; writers carry on, and catch-up works again once
/// the store does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_over_the_payload_budget_reads_nodes_back_from_the_store() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let store = faulty_store(&objects, &faults);
    let mut config = ServerConfig::default();
    config.rooms.payload_budget = 0;
    let relay = Relay::start_with_store(config, Arc::new(store)).await;
    let r = "budget";
    let mut writer = steady_client(&relay, r).await;
    let mut nodes: Vec<Node> = Vec::new();
    for number in 1..=10 {
        let mut pack = Vec::new();
        for i in 0..30 {
            let parents: Vec<&Node> = pack.last().or(nodes.last()).into_iter().collect();
            pack.push(node(
                r,
                &parents,
                "doc",
                &format!("{number}/{i} {}", "x".repeat(200)),
            ));
        }
        let outcomes = push(&mut writer, number, pack.clone()).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Accepted(_))));
        nodes.extend(pack);
    }
    let ids = |nodes: &[Node]| nodes.iter().map(|n| n.id).collect::<Vec<_>>();

    let reads = faults.pack_range_reads.load(Ordering::SeqCst);
    let mut reader = Raw::connect(&relay, r).await;
    assert_eq!(ids(&reader.join_and_catch_up().await), ids(&nodes));
    assert!(
        faults.pack_range_reads.load(Ordering::SeqCst) > reads,
        "the catch-up did not read from the packs"
    );

    for switch in [&faults.fail_pack_reads, &faults.corrupt_pack_ranges] {
        Faults::set(switch, true);
        let mut client = Raw::connect(&relay, r).await;
        client.join_empty().await;
        let mut error = None;
        let close = loop {
            match client.next_event().await {
                RawEvent::Frame(Message::ErrorMessage(e)) => error = Some(e.code),
                RawEvent::Frame(Message::Batch(batch)) => {
                    panic!(
                        "sent a batch of {} nodes it could not read",
                        batch.nodes.len()
                    )
                }
                RawEvent::Frame(other) => panic!("unexpected {other:?}"),
                RawEvent::Closed(close) => break close,
            }
        };
        assert_eq!(Failure { error, close }, STORE_FAILED);
        // The writer is untouched.
        let next = node(r, &[nodes.last().unwrap()], "doc", "still writing");
        let outcomes = push(&mut writer, 100 + nodes.len() as u64, vec![next.clone()]);
        assert!(matches!(
            outcomes.await.unwrap()[..],
            [Outcome::Accepted(_)]
        ));
        nodes.push(next);
        Faults::set(switch, false);
    }
    let mut reader = Raw::connect(&relay, r).await;
    assert_eq!(ids(&reader.join_and_catch_up().await), ids(&nodes));
}

/// The packs stored for `room_name`, by object name.
async fn pack_names(objects: &Arc<dyn ObjectStore>, room_name: &str) -> Vec<String> {
    let dir = Path::from(format!("relay/rooms/r-{room_name}/packs"));
    let listed: Vec<_> = futures::StreamExt::collect(objects.list(Some(&dir))).await;
    let mut names: Vec<String> = listed
        .into_iter()
        .map(|meta| meta.unwrap().location.filename().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Packs the newest manifest of `room_name` lists (0 with no manifest).
async fn newest_pack_count(objects: &Arc<dyn ObjectStore>, room_name: &str) -> usize {
    let dir = Path::from(format!("relay/rooms/r-{room_name}/manifest"));
    let listed: Vec<_> = futures::StreamExt::collect(objects.list(Some(&dir))).await;
    let Some(newest) = listed.into_iter().map(|meta| meta.unwrap().location).max() else {
        return 0;
    };
    let bytes = objects.get(&newest).await.unwrap().bytes().await.unwrap();
    weft::store::pack::Manifest::decode(&bytes, &room(room_name))
        .unwrap()
        .packs
        .len()
}

/// Sixteen one-node commits: enough small packs for a merge to start.
async fn sixteen_commits(store: &PackStore, room_name: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..16 {
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        let next = node(room_name, &parents, "doc", &format!("n{i}"));
        store
            .append_nodes(&room(room_name), 1, std::slice::from_ref(&next))
            .await
            .unwrap();
        nodes.push(next);
    }
    nodes
}

/// Shutdown stops a merge whose merged pack is still being written and waits for it: the
/// store keeps the manifest it had (no merge published), loads the same nodes, and takes the
/// next append; the half-done merge left at most an unreferenced pack.
#[tokio::test]
async fn a_merge_cut_short_by_shutdown_leaves_the_store_as_it_was() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let store = faulty_store(&objects, &faults);
    let r = "cut-short";
    let nodes = sixteen_commits(&store, r).await;
    // The merge (started by the last append) gets to write its pack, which now takes a minute.
    faults.write_latency_ms.store(60_000, Ordering::SeqCst);
    let manifests = faults.manifests_written.load(Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), store.close())
        .await
        .expect("shutdown cuts the merge short instead of waiting for it");
    faults.write_latency_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        faults.manifests_written.load(Ordering::SeqCst),
        manifests,
        "no merge published"
    );
    let stored = stored_ids(&objects, r).await;
    assert_eq!(stored, nodes.iter().map(|n| n.id).collect::<Vec<_>>());
    // A relay starting now carries on from the same manifest.
    let next = node(r, &[nodes.last().unwrap()], "doc", "after");
    faulty_store(&objects, &faults)
        .append_nodes(&room(r), 1, std::slice::from_ref(&next))
        .await
        .unwrap();
    assert_eq!(stored_ids(&objects, r).await.last(), Some(&next.id));
}

/// A merge that was published leaves its merged-away packs for a grace period; shutdown does
/// not wait it out: it cancels the deletes, and the packs stay as unreferenced garbage that
/// loads ignore.
#[tokio::test]
async fn shutdown_does_not_wait_out_the_grace_period_of_merged_packs() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let store = faulty_store(&objects, &faults);
    let r = "graced";
    let nodes = sixteen_commits(&store, r).await;
    // Bounded: up to 10 s for the merge and its manifest.
    for _ in 0..400 {
        if pack_names(&objects, r).await.len() == 17 && newest_pack_count(&objects, r).await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        newest_pack_count(&objects, r).await,
        1,
        "the merge is published"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), store.close())
        .await
        .expect("shutdown does not wait for the grace period");
    // Sixteen merged-away packs and the merged one.
    assert_eq!(pack_names(&objects, r).await.len(), 17);
    let stored = stored_ids(&objects, r).await;
    assert_eq!(stored, nodes.iter().map(|n| n.id).collect::<Vec<_>>());
}

/// A store that notes whether it was closed.
struct Closing {
    inner: PackStore,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for Closing {
    fn read<'a>(
        &'a self,
        room: &'a weft::node::RoomId,
    ) -> BoxFuture<'a, Result<Option<RoomReader<'a>>, StoreError>> {
        self.inner.read(room)
    }

    fn append<'a>(
        &'a self,
        room: &'a weft::node::RoomId,
        epoch: u64,
        records: &'a [bytes::Bytes],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.append(room, epoch, records)
    }

    fn fetch<'a>(
        &'a self,
        room: &'a weft::node::RoomId,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<bytes::Bytes>, StoreError>> {
        self.inner.fetch(room, seqs)
    }

    fn release(&self, room: &weft::node::RoomId) {
        self.inner.release(room);
    }

    fn check(&self) -> BoxFuture<'_, Result<StoreReport, StoreError>> {
        self.inner.check()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            self.inner.close().await;
            self.closed.store(true, Ordering::SeqCst);
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The server closes its store when it stops, after its rooms, and does not wait for a
/// merge their commits started: `run` returns with the store's background work stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_its_store_when_it_stops() {
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Arc::new(Faults::default());
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Closing {
        inner: faulty_store(&objects, &faults),
        closed: closed.clone(),
    };
    let relay = Relay::start_with_store(ServerConfig::default(), Arc::new(store)).await;
    let r = "closing";
    let mut client = steady_client(&relay, r).await;
    let mut parent: Option<Node> = None;
    for number in 1..=16 {
        let parents: Vec<&Node> = parent.iter().collect();
        let next = node(r, &parents, "doc", &format!("{number}"));
        push(&mut client, number, vec![next.clone()]).await.unwrap();
        parent = Some(next);
    }
    // The sixteenth commit started a merge; from now on its writes take a minute. (The merge
    // or a checkpoint may already have written a manifest on a fast store: count from here.)
    faults.write_latency_ms.store(60_000, Ordering::SeqCst);
    let manifests = faults.manifests_written.load(Ordering::SeqCst);
    drop(client);
    assert!(!closed.load(Ordering::SeqCst));
    tokio::time::timeout(std::time::Duration::from_secs(10), relay.shutdown())
        .await
        .expect("the server does not wait for the merge");
    assert!(
        closed.load(Ordering::SeqCst),
        "run returned without closing the store"
    );
    // Nothing written after the slowdown finished: shutdown did not wait for it.
    assert_eq!(faults.manifests_written.load(Ordering::SeqCst), manifests);
}
