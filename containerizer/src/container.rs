//! One container's monitor: follows the shim's events until the workload exits, then asks the
//! isolators which limit (if any) ended it.

use std::{path::PathBuf, sync::Arc};

use berth_executor::{ExitStatus, ShimEvent, client};
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

pub(crate) async fn monitor(
    mut shim: client::ShimClient,
    state_dir: PathBuf,
    isolators: Vec<Arc<dyn Isolator>>,
    id: String,
    exit_tx: watch::Sender<Option<Termination>>,
) {
    let mut status = None;
    loop {
        match shim.next_event().await {
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
    let limitation = {
        let isolators = isolators.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || limitation_of(&isolators, &id))
            .await
            .ok()
            .flatten()
    };
    info!(container_id = %id, ?status, ?limitation, "container exited");
    let _ = exit_tx.send(Some(Termination::from_exit(status, limitation)));
}
