//! Runtime lifecycle events into the controller's channel: one forwarder
//! task reads the event stream of the first [`RuntimeSource`] that has one
//! (containerd's own where the agent has containerd's API, else CRI's
//! `GetContainerEvents`: CRI-O, or a containerd whose own API is out of
//! reach; see docs/runtimes.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use super::{EventStream, RuntimeEvent, SharedSource, SourceError};

/// Capacity of the runtime event channel. Container lifecycle events are
/// rare (a busy node starts a few per second); 1,024 rides out a burst of
/// hundreds. When full, events are dropped, counted, and a resync is forced.
pub const RUNTIME_EVENT_CAPACITY: usize = 1024;

/// How long the forwarder waits before it subscribes again.
const RETRY: Duration = Duration::from_millis(200);

/// A stream that ends cleanly this soon after it opened, with no event,
/// is a runtime that sends none: CRI-O answers `GetContainerEvents` so
/// unless `enable_pod_events` is on. [`SILENT_LIMIT`] such streams in a
/// row mean the source has no event stream.
const SILENT_CLOSE: Duration = Duration::from_secs(1);
const SILENT_LIMIT: u32 = 3;

/// Forwards a runtime's events into the controller's channel. `sources`
/// in order of preference: one without an event stream (it answers
/// [`super::SourceError::Unsupported`], as containerd 1.6's CRI does, or
/// closes every stream at once with no event, as CRI-O does without
/// `enable_pod_events`) gives way to the next; with none left, new
/// containers are learnt at the next resync (or when the kernel holds one
/// of their execs).
///
/// When the stream breaks (the runtime restarted), it retries every
/// 200 ms, and after every re-subscription it asks the controller for a
/// resync: what was created while nobody listened is classified at once,
/// not at the next periodic resync. Events the full channel refuses are
/// counted in `drops`.
pub async fn forward_events(
    sources: Vec<SharedSource>,
    tx: mpsc::Sender<RuntimeEvent>,
    drops: Arc<AtomicU64>,
    resync: Arc<Notify>,
) {
    let mut sources = sources.into_iter();
    let Some(mut source) = sources.next() else {
        return;
    };
    let mut first = true;
    let mut failing = false;
    let mut silent = 0;
    loop {
        let api = source.api();
        // Why this source has no event stream, once that is clear.
        let none = match source.events().await {
            Ok(stream) => {
                if !first {
                    info!("resubscribed to {api} events; resyncing");
                    resync.notify_one();
                }
                first = false;
                failing = false;
                let opened = Instant::now();
                match pump(stream, &tx, &drops).await {
                    (0, Ok(())) if opened.elapsed() < SILENT_CLOSE => {
                        silent += 1;
                        (silent >= SILENT_LIMIT)
                            .then(|| "every stream closed at once with no event".to_string())
                    }
                    (_, Err(e)) if e.is_unsupported() => Some(e.to_string()),
                    (_, r) => {
                        silent = 0;
                        if let Err(e) = r {
                            warn!("{api} event stream: {e}");
                        }
                        None
                    }
                }
            }
            Err(e) if e.is_unsupported() => Some(e.to_string()),
            Err(e) => {
                if !failing {
                    warn!("{api} subscribe: {e}; retrying every {RETRY:?}");
                }
                failing = true;
                first = false;
                None
            }
        };
        if let Some(why) = none {
            let Some(next) = sources.next() else {
                info!(
                    "{api} has no event stream ({why}); new containers are learnt at the next \
                     resync (--resync-interval) or when the kernel holds one of their execs"
                );
                return;
            };
            info!("{api} has no event stream ({why}); using {}'s", next.api());
            source = next;
            silent = 0;
            continue;
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Passes a stream's events on until it ends: how many, and how it ended.
async fn pump(
    mut stream: EventStream,
    tx: &mpsc::Sender<RuntimeEvent>,
    drops: &AtomicU64,
) -> (u64, Result<(), SourceError>) {
    let mut n = 0;
    while let Some(r) = stream.next().await {
        match r {
            Ok(ev) => {
                n += 1;
                if tx.try_send(ev).is_err() {
                    drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => return (n, Err(e)),
        }
    }
    (n, Ok(()))
}
