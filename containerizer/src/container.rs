//! One container's monitor: follows the shim's events until the workload exits, then asks the
//! isolators which limit (if any) ended it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use berth_executor::{ExitStatus, ShimEvent, ShimRequest, client};
use berth_isolators::{Isolator, Limitation};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How a container ended.
#[derive(Debug, Clone, Serialize)]
pub struct Termination {
    /// The workload's exit, as the shim recorded it; `None` when no record survived.
    pub status: Option<ExitStatus>,
    /// The limit that ended it, if one did.
    pub limitation: Option<Limitation>,
}

impl Termination {
    pub(crate) fn from_exit(status: Option<ExitStatus>, limitation: Option<Limitation>) -> Self {
        Self { status, limitation }
    }
}

pub(crate) struct ContainerHandle {
    #[allow(dead_code)]
    pub id: String,
    #[allow(dead_code)]
    pub pid: Option<i32>,
    pub state_dir: PathBuf,
    pub exit: watch::Receiver<Option<Termination>>,
}

/// The first limitation any isolator reports.
pub(crate) fn limitation_of(isolators: &[Arc<dyn Isolator>], id: &str) -> Option<Limitation> {
    isolators.iter().find_map(|isolator| match isolator.limitation(id) {
        Ok(found) => found,
        Err(err) => {
            warn!(container_id = %id, isolator = isolator.name(), error = %err, "limitation check");
            None
        }
    })
}

/// How often running containers are checked for limits that end them (OOM kill of a child
/// process, disk usage over the limit).
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The first limit any isolator says the running container has hit.
fn check_limits(isolators: &[Arc<dyn Isolator>], id: &str) -> Option<Limitation> {
    isolators
        .iter()
        .find_map(|isolator| match isolator.check(id) {
            Ok(found) => found,
            Err(err) => {
                debug!(container_id = %id, isolator = isolator.name(), error = %err, "limit check");
                None
            }
        })
}

pub(crate) async fn monitor(
    mut shim: client::ShimClient,
    state_dir: PathBuf,
    isolators: Vec<Arc<dyn Isolator>>,
    id: String,
    exit_tx: watch::Sender<Option<Termination>>,
) {
    let mut status = None;
    let mut hit: Option<Limitation> = None;
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = shim.next_event() => match event {
                Ok(Some(ShimEvent::Exited(exit))) => {
                    status = Some(exit);
                    break;
                }
                Ok(Some(event)) => debug!(container_id = %id, ?event, "shim event"),
                Ok(None) => break,
                Err(err) => {
                    warn!(container_id = %id, error = %err, "shim connection");
                    break;
                }
            },
            _ = ticker.tick(), if hit.is_none() => {
                let found = {
                    let isolators = isolators.clone();
                    let id = id.clone();
                    tokio::task::spawn_blocking(move || check_limits(&isolators, &id))
                        .await
                        .ok()
                        .flatten()
                };
                if let Some(limitation) = found {
                    warn!(container_id = %id, ?limitation, "limit reached: killing the container");
                    hit = Some(limitation);
                    if let Err(err) = shim.send(&ShimRequest::Kill { grace_ms: 0 }).await {
                        warn!(container_id = %id, error = %err, "kill after limitation");
                    }
                }
            }
        }
    }
    if status.is_none() {
        // The connection ended without an Exited event: the durable record is the truth.
        // Give the shim a moment to finish writing it if it is exiting right now.
        for _ in 0..50 {
            match client::read_exit(&state_dir) {
                Ok(Some(exit)) => {
                    status = Some(exit);
                    break;
                }
                _ if client::shim_alive(&state_dir) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                _ => {
                    status = client::read_exit(&state_dir).ok().flatten();
                    break;
                }
            }
        }
    }
    let limitation = match hit {
        Some(hit) => Some(hit),
        None => {
            let isolators = isolators.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || limitation_of(&isolators, &id))
                .await
                .ok()
                .flatten()
        }
    };
    info!(container_id = %id, ?status, ?limitation, "container exited");
    let _ = exit_tx.send(Some(Termination::from_exit(status, limitation)));
}
