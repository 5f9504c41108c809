//! The store suite: the same checks against a local directory, process memory and a real
//! S3-compatible server (s3s-fs, started by this file's own setup, installed if missing).
//!
//! Each check opens fresh `PackStore`s over the same objects, as a restarted relay (or a
//! second relay on the same bucket) would.

mod faults;
mod s3;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use weft::node::{Node, RoomId};
use weft::store::pack::FormatError;
use weft::store::{Conflict, PackStore, Store, StoreError};

/// One backend under test.
enum Backend {
    Local(tempfile::TempDir),
    Memory(Arc<object_store::memory::InMemory>),
    S3(s3::Server),
}

impl Backend {
    fn local() -> Self {
        Backend::Local(tempfile::tempdir().unwrap())
    }

    fn memory() -> Self {
        Backend::Memory(Arc::new(object_store::memory::InMemory::new()))
    }

    fn s3() -> Self {
        Backend::S3(s3::Server::start())
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Memory(_) => "memory",
            Backend::S3(_) => "s3",
        }
    }

    /// A handle on the backend's objects (a new client each time, like a new process).
    fn objects(&self) -> Arc<dyn ObjectStore> {
        match self {
            Backend::Local(dir) => Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir.path())
                    .unwrap()
                    .with_fsync(true),
            ),
            Backend::Memory(memory) => memory.clone(),
            Backend::S3(server) => server.objects(),
        }
    }

    /// A fresh store over the backend, under `prefix`.
    fn store(&self) -> PackStore {
        PackStore::new(
            self.objects(),
            Path::from("suite"),
            format!("{} test store", self.name()),
        )
    }
}

fn backends() -> Vec<Backend> {
    vec![Backend::local(), Backend::memory(), Backend::s3()]
}

fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

/// A chain of `n` nodes in `room`, each the child of the previous one (after `parent`).
fn chain(room: &RoomId, parent: Option<&Node>, n: usize, tag: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let parents: Vec<&Node> = nodes.last().or(parent).into_iter().collect();
        let node = Node::child_of(room, &parents, "doc", format!("{tag} {i}")).unwrap();
        nodes.push(node);
    }
    nodes
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `check` against every backend.
fn each_backend<F>(check: F)
where
    F: Fn(&Backend) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>,
{
    let rt = runtime();
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        rt.block_on(check(&backend));
    }
}

#[test]
fn appends_survive_a_restart_in_order() {
    each_backend(|backend| {
        Box::pin(async move {
            let r = room("restart");
            let store = backend.store();
            assert!(store.load(&r).await.unwrap().is_none(), "never written");
            let first = chain(&r, None, 5, "a");
            let second = chain(&r, first.last(), 3, "b");
            store.append_nodes(&r, 77, &first).await.unwrap();
            store.append_nodes(&r, 77, &second).await.unwrap();
            // A new relay process over the same objects.
            let loaded = backend.store().load(&r).await.unwrap().unwrap();
            assert_eq!(loaded.epoch, 77);
            let expected: Vec<Node> = first.iter().chain(&second).cloned().collect();
            assert_eq!(loaded.nodes, expected);
            // Other rooms are untouched.
            assert!(
                backend
                    .store()
                    .load(&room("other"))
                    .await
                    .unwrap()
                    .is_none()
            );
        })
    });
}

/// A room's objects live under `rooms/r-{room}/` with the id percent-encoded as object_store
/// encodes a path segment: every allowed character is kept except `~`, written `%7E`
/// (protocol/storage.md). Ids that differ only in `~` and its encoding stay apart.
#[test]
fn room_ids_map_to_keys_as_specified() {
    each_backend(|backend| {
        Box::pin(async move {
            for (id, dir) in [
                ("a~b", "r-a%7Eb"),
                ("~", "r-%7E"),
                (".", "r-."),
                ("..", "r-.."),
                ("Az09._-", "r-Az09._-"),
            ] {
                let r = room(id);
                let nodes = chain(&r, None, 2, id);
                backend.store().append_nodes(&r, 5, &nodes).await.unwrap();
                let prefix = Path::parse(format!("suite/rooms/{dir}/packs")).unwrap();
                let listed: Vec<_> = backend.objects().list(Some(&prefix)).collect().await;
                assert_eq!(
                    listed.len(),
                    1,
                    "room {id:?}: one commit pack under {prefix}"
                );
                let loaded = backend.store().load(&r).await.unwrap().unwrap();
                assert_eq!(loaded.nodes, nodes, "room {id:?}");
            }
        })
    });
}

/// Two relays on the same objects: the second one's commit, based on a stale view, finds its
/// commit pack's name taken and fails with a conflict instead of overwriting; after reloading
/// it continues, and every acknowledged append is there.
#[test]
fn a_second_writer_is_fenced_by_conditional_puts() {
    each_backend(|backend| {
        Box::pin(async move {
            let r = room("fenced");
            let a = backend.store();
            let b = backend.store();
            let base = chain(&r, None, 2, "base");
            a.append_nodes(&r, 5, &base).await.unwrap();
            assert_eq!(b.load(&r).await.unwrap().unwrap().nodes, base);
            let from_a = chain(&r, base.last(), 2, "a");
            a.append_nodes(&r, 5, &from_a).await.unwrap();
            let from_b = chain(&r, base.last(), 2, "b");
            let refused = b.append_nodes(&r, 5, &from_b).await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(Conflict::Pack { .. }))),
                "{}: {refused:?}",
                backend.name()
            );
            // B reloads, sees A's nodes, and its next write lands after them.
            let seen = b.load(&r).await.unwrap().unwrap();
            assert_eq!(seen.nodes.len(), 4);
            b.append_nodes(&r, 5, &from_b).await.unwrap();
            // Now A is the stale one.
            let late = chain(&r, from_a.last(), 1, "late");
            assert!(matches!(
                a.append_nodes(&r, 5, &late).await,
                Err(StoreError::Conflict(Conflict::Pack { .. }))
            ));
            // A write for another epoch of the room is refused too, whatever its generation.
            let fresh = backend.store();
            assert!(matches!(
                fresh.append_nodes(&r, 6, &late).await,
                Err(StoreError::Conflict(Conflict::Epoch {
                    stored: 5,
                    asked: 6
                }))
            ));
            let all = backend.store().load(&r).await.unwrap().unwrap().nodes;
            let expected: Vec<Node> = base.iter().chain(&from_a).chain(&from_b).cloned().collect();
            assert_eq!(all, expected);
        })
    });
}

/// A pack whose bytes were torn or altered is detected: the load fails with `Corrupt` and no
/// partial room is returned. A pack written without its manifest (a crash between the two
/// writes) is ignored.
#[test]
fn torn_packs_are_detected_and_unreferenced_packs_ignored() {
    each_backend(|backend| {
        Box::pin(async move {
            let objects = backend.objects();
            let r = room("torn");
            let store = backend.store();
            let nodes = chain(&r, None, 4, "t");
            store.append_nodes(&r, 1, &nodes).await.unwrap();
            // A pack nobody references, as if the relay died before writing the manifest.
            let orphan = Path::from("suite/rooms/r-torn/packs/00000000000000000005-00.pack");
            objects
                .put(&orphan, PutPayload::from(vec![1u8, 2, 3]))
                .await
                .unwrap();
            assert_eq!(
                backend.store().load(&r).await.unwrap().unwrap().nodes,
                nodes
            );
            // Tear the real pack: keep its first half.
            let packs: Vec<_> = objects
                .list(Some(&Path::from("suite/rooms/r-torn/packs")))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .map(|meta| meta.unwrap())
                .filter(|meta| meta.location != orphan)
                .collect();
            assert_eq!(packs.len(), 1);
            let path = &packs[0].location;
            let bytes = objects.get(path).await.unwrap().bytes().await.unwrap();
            let torn = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
            objects.put(path, PutPayload::from(torn)).await.unwrap();
            let result = backend.store().load(&r).await;
            assert!(
                matches!(
                    &result,
                    Err(StoreError::Corrupt { path: torn, source: FormatError::Checksum })
                        if torn == path.as_ref()
                ),
                "{}: {:?}",
                backend.name(),
                result.map(|room| room.map(|r| r.nodes.len()))
            );
        })
    });
}

#[test]
fn store_check_reports_reachability_and_layout() {
    each_backend(|backend| {
        Box::pin(async move {
            let report = backend.store().check().await.unwrap();
            assert_eq!(report.layout, weft::store::pack::LAYOUT_VERSION);
            // Checking again reads the marker it wrote.
            assert_eq!(backend.store().check().await.unwrap().layout, report.layout);
            // A store written by a future layout is refused.
            let objects = backend.objects();
            let marker = Path::from("suite/weft-layout.json");
            objects
                .put(&marker, PutPayload::from(br#"{"layout":99}"#.to_vec()))
                .await
                .unwrap();
            let refused = backend.store().check().await;
            assert!(
                matches!(
                    refused,
                    Err(StoreError::Corrupt {
                        source: FormatError::Layout(99),
                        ..
                    })
                ),
                "{refused:?}"
            );
        })
    });
}

/// The newest manifest of `room`, read straight from the objects (an empty one while no
/// checkpoint has been written).
async fn newest_manifest(
    objects: &Arc<dyn ObjectStore>,
    room: &RoomId,
) -> weft::store::pack::Manifest {
    let empty = weft::store::pack::Manifest::new(room, 0);
    let dir = Path::from(format!("suite/rooms/r-{}/manifest", room.as_str()));
    let listed: Vec<_> = objects.list(Some(&dir)).collect::<Vec<_>>().await;
    let newest = listed
        .into_iter()
        .map(|meta| meta.unwrap().location)
        .filter(|path| path.as_ref().ends_with(".json"))
        .max_by_key(|path| path.as_ref().to_owned());
    let Some(newest) = newest else {
        return empty;
    };
    let bytes = objects.get(&newest).await.unwrap().bytes().await.unwrap();
    weft::store::pack::Manifest::decode(&bytes, room).unwrap()
}

/// Many small commits are merged in the background into one pack; the room loads the same,
/// the merged packs are deleted, and appends go on meanwhile.
#[test]
fn small_packs_are_compacted_in_the_background() {
    each_backend(|backend| {
        Box::pin(async move {
            let r = room("compacted");
            let store = backend.store();
            let nodes = chain(&r, None, 40, "c");
            for node in &nodes {
                store
                    .append_nodes(&r, 4, std::slice::from_ref(node))
                    .await
                    .unwrap();
            }
            let objects = backend.objects();
            // Bounded: up to 10 s for the background merge to land.
            let mut packs = usize::MAX;
            for _ in 0..200 {
                let manifest = newest_manifest(&objects, &r).await;
                packs = manifest.packs.len();
                // Merged: the first pack holds the first sixteen commits.
                if manifest.packs.first().is_some_and(|p| p.count >= 16) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let merged = newest_manifest(&objects, &r).await;
            assert!(
                merged.packs.first().is_some_and(|p| p.count >= 16),
                "{}: not merged, {packs} packs",
                backend.name()
            );
            let loaded = backend.store().load(&r).await.unwrap().unwrap();
            assert_eq!(loaded.nodes, nodes, "{}", backend.name());
            let stored_packs = objects
                .list(Some(&Path::from("suite/rooms/r-compacted/packs")))
                .collect::<Vec<_>>()
                .await
                .len();
            // Merged packs are deleted after a grace period; until then they are unreferenced.
            assert!(stored_packs <= 40 + 3, "{stored_packs} pack objects");
            // Appending goes on after compaction.
            let more = chain(&r, nodes.last(), 2, "after");
            store.append_nodes(&r, 4, &more).await.unwrap();
            let loaded = backend.store().load(&r).await.unwrap().unwrap();
            assert_eq!(loaded.nodes.len(), 42);
        })
    });
}

/// Stored records come back by arrival number with range reads: through a store that wrote
/// them, through a fresh one, after the packs were merged, and through a store whose cached
/// manifest still names packs that were merged and deleted since.
#[test]
fn stored_records_are_read_back_by_arrival_number() {
    each_backend(|backend| {
        Box::pin(async move {
            let name = backend.name();
            let r = room("read-back");
            let writer = backend.store();
            let nodes = chain(&r, None, 40, "rb");
            let record = |seq: u64| weft::protocol::encode_node(&nodes[seq as usize - 1]);
            for node in &nodes[..15] {
                writer
                    .append_nodes(&r, 4, std::slice::from_ref(node))
                    .await
                    .unwrap();
            }
            // A second process reads some records now and keeps its view of the packs.
            let stale = backend.store();
            let early: Vec<u64> = (1..=15).collect();
            let got = stale.fetch(&r, &early).await.unwrap();
            assert_eq!(got, early.iter().map(|s| record(*s)).collect::<Vec<_>>());

            for node in &nodes[15..] {
                writer
                    .append_nodes(&r, 4, std::slice::from_ref(node))
                    .await
                    .unwrap();
            }
            let objects = backend.objects();
            let mut manifest = newest_manifest(&objects, &r).await;
            for _ in 0..200 {
                if manifest.packs.first().is_some_and(|p| p.count >= 16) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                manifest = newest_manifest(&objects, &r).await;
            }
            let merged = manifest.packs.first().is_some_and(|p| p.count >= 16);
            assert!(merged, "{name}: not compacted");

            let wanted = [1, 2, 17, 33, 40];
            let expected: Vec<Bytes> = wanted.iter().map(|s| record(*s)).collect();
            assert_eq!(writer.fetch(&r, &wanted).await.unwrap(), expected, "{name}");
            assert_eq!(backend.store().fetch(&r, &wanted).await.unwrap(), expected);
            writer.release(&r);
            assert_eq!(writer.fetch(&r, &wanted).await.unwrap(), expected, "{name}");

            // The merged packs' grace period is over: the commit packs the manifest merged
            // away are gone (the commit packs after its end are part of the room; a merged
            // pack may be merged again meanwhile, so those are left alone).
            let dir = Path::from("suite/rooms/r-read-back/packs");
            let listed: Vec<_> = objects.list(Some(&dir)).collect().await;
            for meta in listed {
                let path = meta.unwrap().location;
                let file = path.filename().unwrap().to_owned();
                let first: u64 = file[..20].parse().unwrap();
                let merged_away = first < manifest.next_seq()
                    && !file.contains('-')
                    && !manifest.packs.iter().any(|p| p.name == file);
                if merged_away {
                    objects.delete(&path).await.unwrap();
                }
            }
            assert_eq!(
                stale.fetch(&r, &[2, 30]).await.unwrap(),
                [record(2), record(30)]
            );

            // Numbers the room does not have, and a room that was never stored.
            assert!(matches!(
                writer.fetch(&r, &[41]).await,
                Err(StoreError::NotStored { seq: 41 })
            ));
            assert!(writer.fetch(&room("never-stored"), &[1]).await.is_err());
        })
    });
}

/// Two relays with the same view commit at once: both create the commit pack for the same
/// arrival numbers, exactly one create wins, the other gets a typed conflict, and the room
/// holds the winner's nodes and nothing of the loser's.
///
/// Not against s3s-fs: its conditional put checks, then writes, so two creates at the same
/// moment can both succeed there (seen with s3s-fs 0.14.1). S3 itself, a local directory and
/// memory create atomically; the s3s-fs run of `a_second_writer_is_fenced_by_conditional_puts`
/// covers a loser that comes second.
#[test]
fn racing_commits_for_the_same_numbers_collide_on_the_pack() {
    each_backend(|backend| {
        Box::pin(async move {
            if matches!(backend, Backend::S3(_)) {
                return;
            }
            let r = room("race");
            let base = chain(&r, None, 3, "base");
            backend.store().append_nodes(&r, 9, &base).await.unwrap();
            let (a, b) = (backend.store(), backend.store());
            assert_eq!(a.load(&r).await.unwrap().unwrap().nodes, base);
            assert_eq!(b.load(&r).await.unwrap().unwrap().nodes, base);
            let from_a = chain(&r, base.last(), 2, "a");
            let from_b = chain(&r, base.last(), 3, "b");
            let (won_a, won_b) = tokio::join!(
                a.append_nodes(&r, 9, &from_a),
                b.append_nodes(&r, 9, &from_b)
            );
            let (winner, loser) = match (&won_a, &won_b) {
                (Ok(()), Err(_)) => (&from_a, &won_b),
                (Err(_), Ok(())) => (&from_b, &won_a),
                _ => panic!(
                    "{}: exactly one wins: {won_a:?} / {won_b:?}",
                    backend.name()
                ),
            };
            assert!(
                matches!(loser, Err(StoreError::Conflict(Conflict::Pack { .. }))),
                "{}: {loser:?}",
                backend.name()
            );
            let loaded = backend.store().load(&r).await.unwrap().unwrap().nodes;
            let expected: Vec<Node> = base.iter().chain(winner).cloned().collect();
            assert_eq!(loaded, expected, "{}", backend.name());
        })
    });
}

/// The ack follows the commit pack alone: with every manifest write failing (a relay that
/// dies after its packs and before any checkpoint), commits still succeed, and a fresh store
/// recovers every one of them from the newest manifest plus the packs that chain on from it,
/// for a room with no manifest at all and for one whose manifest is behind.
#[test]
fn commits_without_a_manifest_are_recovered_on_load() {
    each_backend(|backend| {
        Box::pin(async move {
            let faults = Arc::new(faults::Faults::default());
            let faulty: Arc<dyn ObjectStore> = Arc::new(faults::Faulty {
                inner: backend.objects(),
                faults: faults.clone(),
            });
            let store = || PackStore::new(faulty.clone(), Path::from("suite"), "faulty".into());
            faults::Faults::set(&faults.fail_manifests, true);
            let r = room("no-manifest");
            let writer = store();
            let mut acked: Vec<Node> = Vec::new();
            for i in 0..3 {
                let nodes = chain(&r, acked.last(), i + 1, &format!("c{i}"));
                writer.append_nodes(&r, 3, &nodes).await.unwrap();
                acked.extend(nodes);
            }
            let loaded = store().load(&r).await.unwrap().unwrap();
            assert_eq!(
                (loaded.epoch, loaded.nodes),
                (3, acked.clone()),
                "{}",
                backend.name()
            );

            // A checkpoint lands, then manifests fail again: the tail after it is recovered.
            faults::Faults::set(&faults.fail_manifests, false);
            let more = chain(&r, acked.last(), 2, "checkpointed");
            writer.append_nodes(&r, 3, &more).await.unwrap();
            acked.extend(more);
            let mut manifest = newest_manifest(&faulty, &r).await;
            for _ in 0..200 {
                if manifest.node_count() == acked.len() as u64 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                manifest = newest_manifest(&faulty, &r).await;
            }
            assert_eq!(
                manifest.node_count(),
                acked.len() as u64,
                "{}",
                backend.name()
            );
            faults::Faults::set(&faults.fail_manifests, true);
            for i in 0..2 {
                let nodes = chain(&r, acked.last(), 1, &format!("tail{i}"));
                writer.append_nodes(&r, 3, &nodes).await.unwrap();
                acked.extend(nodes);
            }
            let reader = store();
            assert_eq!(reader.load(&r).await.unwrap().unwrap().nodes, acked);
            // And the recovered head is one a relay can go on writing from.
            let next = chain(&r, acked.last(), 1, "after");
            reader.append_nodes(&r, 3, &next).await.unwrap();
            acked.extend(next);
            assert_eq!(store().load(&r).await.unwrap().unwrap().nodes, acked);
        })
    });
}

/// Stores written before commit packs existed (every pack named `{first}-{nonce}.pack` and
/// listed by a manifest per commit) still load, and take new commits after their packs.
#[test]
fn stores_with_nonce_named_packs_still_load() {
    each_backend(|backend| {
        Box::pin(async move {
            use weft::store::pack::{Manifest, PackEntry, encode_pack};
            let r = room("legacy");
            let objects = backend.objects();
            let old = chain(&r, None, 5, "old");
            let mut manifest = Manifest::new(&r, 21);
            for (first, part) in [(1u64, &old[..2]), (3, &old[2..])] {
                let records: Vec<Bytes> = part.iter().map(weft::protocol::encode_node).collect();
                let (bytes, _) = encode_pack(21, first, &records);
                let name = format!("{first:020}-{:016x}.pack", first * 7);
                let path = Path::from(format!("suite/rooms/r-legacy/packs/{name}"));
                let size = bytes.len() as u64;
                objects.put(&path, PutPayload::from(bytes)).await.unwrap();
                manifest.packs.push(PackEntry {
                    name,
                    first,
                    count: part.len() as u32,
                    bytes: size,
                });
            }
            manifest.generation = 2;
            let path = Path::from("suite/rooms/r-legacy/manifest/00000000000000000002.json");
            objects
                .put(&path, PutPayload::from(manifest.encode()))
                .await
                .unwrap();
            let store = backend.store();
            let loaded = store.load(&r).await.unwrap().unwrap();
            assert_eq!((loaded.epoch, &loaded.nodes), (21, &old));
            let new = chain(&r, old.last(), 2, "new");
            store.append_nodes(&r, 21, &new).await.unwrap();
            let all: Vec<Node> = old.iter().chain(&new).cloned().collect();
            assert_eq!(backend.store().load(&r).await.unwrap().unwrap().nodes, all);
            let commit = Path::from("suite/rooms/r-legacy/packs/00000000000000000006.pack");
            assert!(objects.head(&commit).await.is_ok(), "{}", backend.name());
        })
    });
}
