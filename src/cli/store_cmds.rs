//! `weft store check`, `weft export` and `weft import`: work on a store directly, without a
//! relay.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use weft::node::{NodeLimits, Rejection, RoomId};
use weft::protocol;
use weft::room::{OrphanLimits, Room};
use weft::store::{self, Store, pack};

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreLocation {
    /// The store: a directory, `memory://`, or `s3://bucket/prefix` (and `gs://`, `az://`)
    /// configured from the standard environment variables.
    #[arg(long, env = "WEFT_STORE", default_value = "./weft-data")]
    store: String,
}

/// `weft store …`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check that the store is reachable and writable and holds a layout this relay reads.
    Check(StoreLocation),
}

/// `weft export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    location: StoreLocation,
    /// The room to export.
    #[arg(long, env = "WEFT_ROOM")]
    room: RoomId,
    /// The file to write (a single checksummed pack, protocol/storage.md).
    #[arg(long)]
    out: PathBuf,
}

/// `weft import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    location: StoreLocation,
    /// The room to import into.
    #[arg(long, env = "WEFT_ROOM")]
    room: RoomId,
    /// A file written by `weft export`.
    #[arg(long = "in")]
    input: PathBuf,
}

/// `weft store check`: prints what it found, fails if the store is unusable.
pub async fn store(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Check(location) => {
            let store = store::open(&location.store)?;
            let report = store
                .check()
                .await
                .with_context(|| format!("store {} failed its check", location.store))?;
            println!(
                "ok: {} is reachable and writable; layout version {}",
                report.description, report.layout
            );
            Ok(())
        }
    }
}

/// What an export file starts with, before the room id and the pack (protocol/storage.md).
const EXPORT_MAGIC: &[u8; 8] = b"WEFTEXP1";

/// An export file: the magic, the room id (one length byte, then its bytes) and the pack.
fn export_file(room: &RoomId, pack: &[u8]) -> Vec<u8> {
    let id = room.as_str().as_bytes();
    let mut file = Vec::with_capacity(EXPORT_MAGIC.len() + 1 + id.len() + pack.len());
    file.extend_from_slice(EXPORT_MAGIC);
    // Room ids are at most 128 bytes (RoomId::MAX_LEN), so the length fits a byte.
    file.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    file.extend_from_slice(id);
    file.extend_from_slice(pack);
    file
}

/// The room id and the pack of an export file, or `None` when `file` does not start like one
/// (a bare pack, or not an export at all: the pack decoder says which).
fn split_export(file: &[u8]) -> Option<(&str, &[u8])> {
    let rest = file.strip_prefix(EXPORT_MAGIC.as_slice())?;
    let (&len, rest) = rest.split_first()?;
    let (room, pack) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(room).ok()?, pack))
}

/// `weft export`: the room's id and its nodes, in arrival order, as one file.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let store = store::open(&args.location.store)?;
    let Some(stored) = store.load(&args.room).await? else {
        bail!("room {} is not in {}", args.room, args.location.store);
    };
    let records: Vec<Bytes> = stored.nodes.iter().map(protocol::encode_node).collect();
    let (pack, _) = pack::encode_pack(stored.epoch, 1, &records);
    let bytes = export_file(&args.room, &pack);
    // Written aside, then renamed: an interrupted export never leaves half a file behind.
    let partial = args.out.with_extension("partial");
    std::fs::write(&partial, &bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "exported {} of room {} to {}",
        super::nodes(stored.nodes.len(), ""),
        args.room,
        args.out.display()
    );
    Ok(())
}

/// `weft import`: adds the file's nodes that the room lacks, checked like a relay's restore
/// (ids, limits, parents first). A room that did not exist takes the file's epoch and
/// numbering, so clients that synced with the exported room stay valid.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let pack = match split_export(&bytes) {
        Some((room, _)) if room != args.room.as_str() => bail!(
            "{} is an export of room {room}, not of room {}; import it with --room {room}",
            args.input.display(),
            args.room
        ),
        Some((_, pack)) => pack,
        // A bare pack, as exports were before they named their room.
        None => &bytes[..],
    };
    let (header, nodes, _) = pack::decode_pack(pack).with_context(|| {
        format!(
            "{} is not an export of room {}",
            args.input.display(),
            args.room
        )
    })?;
    // A relay serving the room keeps it in memory and would close every session of it (4006)
    // at its next commit after this one; refuse rather than break it.
    let _lock = match super::store_lock::lock(&args.location.store) {
        Ok(lock) => lock,
        Err(super::store_lock::LockError::Held(path)) => bail!(
            "a relay is serving {} (it holds {}); stop it first, then import",
            args.location.store,
            path.display()
        ),
        Err(super::store_lock::LockError::Other(e)) => return Err(e),
    };
    let store = store::open(&args.location.store)?;
    let existing = store.load(&args.room).await?;
    let epoch = existing.as_ref().map_or(header.epoch, |room| room.epoch);
    let mut room = Room::new(
        args.room.clone(),
        epoch,
        NodeLimits::default(),
        OrphanLimits::default(),
    );
    for node in existing.map(|room| room.nodes).unwrap_or_default() {
        room.restore(node)
            .map_err(|reason| anyhow::anyhow!("stored node failed validation: {reason}"))?;
    }
    let before = room.seq();
    for node in nodes {
        let id = node.id;
        match room.restore(node) {
            Ok(_) => {}
            // Ids hash the room in (§3.1): the file's room name is not stored, only that it
            // is another one.
            Err(Rejection::HashMismatch) => bail!(
                "{} is not an export of room {}: its nodes belong to another room; import it \
                 under the room name it was exported from",
                args.input.display(),
                args.room
            ),
            Err(reason) => bail!("node {id} cannot be imported: {reason}"),
        }
    }
    // The room was built without a payload budget: every encoding is resident.
    let fresh: Option<Vec<Bytes>> = (before + 1..=room.seq())
        .map(|seq| room.wire_at(seq).cloned())
        .collect();
    let fresh = fresh.context("an imported node lost its encoding")?;
    store.append(&args.room, epoch, &fresh).await?;
    println!(
        "imported {} into room {} ({} in total)",
        super::nodes(fresh.len(), "new "),
        args.room,
        room.seq()
    );
    Ok(())
}
