//! Reads the exec ring buffer without blocking (AsyncFd), decodes, and
//! passes records on through a bounded channel. Everything lost is counted.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::event::{decode, ExecRecord, Record};

/// Capacity of the channel from the ring-buffer reader to the pipeline.
/// 16,384 records is ~8 s of this machine's maximum exec rate (about 1,700
/// per second per core) and ~5 MiB at most: enough to ride out a slow
/// findings sink for a while; beyond that records are dropped and counted.
pub const CHANNEL_CAPACITY: usize = 16_384;

/// User-space losses (the kernel counts its own in the COUNTERS map).
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub received: AtomicU64,
    pub decode_errors: AtomicU64,
    /// The pipeline channel was full: records dropped in user space.
    pub channel_drops: AtomicU64,
}

/// Drains the ring buffer into `tx` until the receiver is gone.
pub async fn pump(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<ExecRecord>,
    stats: Arc<ReaderStats>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // for as long as the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        // Clear readiness BEFORE draining. The kernel wakes the reader only
        // when it has consumed everything before the new record; a record
        // that lands between the last `next()` and a later `clear_ready()`
        // would lose its wake-up, and with it every wake-up after it (the
        // reader would stall for good). Cleared first, such a record is
        // either drained below or sets readiness again.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            stats.received.fetch_add(1, Ordering::Relaxed);
            match decode(&item) {
                Ok(Record::Exec(rec)) => match tx.try_send(rec) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        stats.channel_drops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                },
                Err(e) => {
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("dropping undecodable exec event: {e}");
                }
            }
        }
    }
}

/// Synchronous drain for tests and shutdown: every record now in the buffer.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<ExecRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Ok(Record::Exec(r)) = decode(&item) {
            out.push(r);
        }
    }
    out
}
