//! The status update manager: one stream per task, one update in flight per stream, in order;
//! an unacknowledged update is re-sent after 10 s, doubling up to 10 min (Mesos semantics).
//! Persistence is the agent's task checkpoint (each update is checkpointed before it is queued).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use berth_proto::mesos::v1 as mesos;

/// First retry interval.
pub const RETRY_INITIAL: Duration = Duration::from_secs(10);
/// Longest retry interval.
pub const RETRY_MAX: Duration = Duration::from_secs(600);

struct Stream {
    framework_id: String,
    pending: VecDeque<mesos::TaskStatus>,
    /// When the front update is due to be (re)sent; `None` = not sent yet.
    next_send: Option<Instant>,
    backoff: Duration,
}

/// Per-task ordered, acknowledged delivery of status updates.
#[derive(Default)]
pub struct StatusUpdateManager {
    streams: Mutex<BTreeMap<String, Stream>>,
}

impl StatusUpdateManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an update for a task.
    pub fn enqueue(&self, framework_id: &str, task_id: &str, status: mesos::TaskStatus) {
        let mut streams = self.streams.lock().expect("streams lock");
        let stream = streams
            .entry(task_id.to_string())
            .or_insert_with(|| Stream {
                framework_id: framework_id.to_string(),
                pending: VecDeque::new(),
                next_send: None,
                backoff: RETRY_INITIAL,
            });
        if stream.pending.iter().any(|s| s.uuid == status.uuid) {
            return;
        }
        stream.pending.push_back(status);
    }

    /// Queues an update that makes the unacknowledged updates at the end of the task's stream
    /// for which `superseded` holds obsolete (health-only `TASK_RUNNING` updates: only the
    /// latest health matters). Those are dropped, even the one in flight (a late
    /// acknowledgement of it then matches nothing), and their uuids returned; when the front
    /// was dropped, the new update is due at once. A framework that acknowledges promptly sees
    /// every update; one that does not (a detached `berth run`) no longer blocks the master's
    /// view of the task's health behind an update nobody will acknowledge.
    pub fn enqueue_superseding(
        &self,
        framework_id: &str,
        task_id: &str,
        status: mesos::TaskStatus,
        superseded: impl Fn(&mesos::TaskStatus) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut dropped = Vec::new();
        {
            let mut streams = self.streams.lock().expect("streams lock");
            if let Some(stream) = streams.get_mut(task_id) {
                while stream.pending.back().is_some_and(&superseded) {
                    let old = stream.pending.pop_back().expect("checked");
                    dropped.extend(old.uuid);
                    if stream.pending.is_empty() {
                        stream.next_send = None;
                        stream.backoff = RETRY_INITIAL;
                    }
                }
            }
        }
        self.enqueue(framework_id, task_id, status);
        dropped
    }

    /// The updates to send now: the front of each stream if it was never sent or its retry
    /// time has come. Marks them in flight and schedules their retry.
    pub fn due(&self, now: Instant) -> Vec<(String, mesos::TaskStatus)> {
        let mut out = Vec::new();
        let mut streams = self.streams.lock().expect("streams lock");
        for stream in streams.values_mut() {
            let Some(front) = stream.pending.front() else {
                continue;
            };
            let due = match stream.next_send {
                None => true,
                Some(at) => now >= at,
            };
            if due {
                if stream.next_send.is_some() {
                    stream.backoff = (stream.backoff * 2).min(RETRY_MAX);
                }
                stream.next_send = Some(now + stream.backoff);
                out.push((stream.framework_id.clone(), front.clone()));
            }
        }
        out
    }

    /// Handles an acknowledgement; true when it matched the update in flight.
    pub fn acknowledge(&self, task_id: &str, uuid: &[u8]) -> bool {
        let mut streams = self.streams.lock().expect("streams lock");
        let Some(stream) = streams.get_mut(task_id) else {
            return false;
        };
        if stream.pending.front().and_then(|s| s.uuid.as_deref()) != Some(uuid) {
            return false;
        }
        stream.pending.pop_front();
        stream.next_send = None;
        stream.backoff = RETRY_INITIAL;
        if stream.pending.is_empty() {
            streams.remove(task_id);
        }
        true
    }

    /// Makes the front update of every stream due now (after a (re-)registration: Mesos
    /// resumes its status update manager and re-sends at once). Backoffs are reset.
    pub fn resume(&self) {
        for stream in self.streams.lock().expect("streams lock").values_mut() {
            stream.next_send = None;
            stream.backoff = RETRY_INITIAL;
        }
    }

    /// Number of unacknowledged updates.
    pub fn pending(&self) -> usize {
        self.streams
            .lock()
            .expect("streams lock")
            .values()
            .map(|s| s.pending.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uuid: u8) -> mesos::TaskStatus {
        mesos::TaskStatus {
            uuid: Some(vec![uuid]),
            ..Default::default()
        }
    }

    #[test]
    fn one_in_flight_in_order_with_backoff() {
        let m = StatusUpdateManager::new();
        let t0 = Instant::now();
        m.enqueue("f", "t", status(1));
        m.enqueue("f", "t", status(2));
        m.enqueue("f", "t", status(2)); // duplicate ignored
        let sent = m.due(t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.uuid, Some(vec![1]));
        assert!(m.due(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(m.due(t0 + Duration::from_secs(10))[0].1.uuid, Some(vec![1]));
        // The next retry waits 20 s (doubling).
        assert!(m.due(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(m.due(t0 + Duration::from_secs(30)).len(), 1);
        assert!(!m.acknowledge("t", &[2]), "out-of-order ack must not match");
        assert!(m.acknowledge("t", &[1]));
        assert_eq!(m.due(t0 + Duration::from_secs(30))[0].1.uuid, Some(vec![2]));
        assert!(m.acknowledge("t", &[2]));
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn health_updates_supersede_unacknowledged_health_updates() {
        let m = StatusUpdateManager::new();
        let t0 = Instant::now();
        let health = |s: &mesos::TaskStatus| s.healthy.is_some();
        let mut running = status(1);
        running.healthy = None;
        m.enqueue("f", "t", running);
        let mut up = status(2);
        up.healthy = Some(true);
        assert!(m.enqueue_superseding("f", "t", up, health).is_empty());
        // The plain update is in flight and stays; it is acknowledged, then `up` goes out.
        assert_eq!(m.due(t0)[0].1.uuid, Some(vec![1]));
        assert!(m.acknowledge("t", &[1]));
        assert_eq!(m.due(t0)[0].1.uuid, Some(vec![2]));
        // Nobody acknowledges `up`: `down` replaces it and is due at once.
        let mut down = status(3);
        down.healthy = Some(false);
        assert_eq!(m.enqueue_superseding("f", "t", down, health), vec![vec![2]]);
        assert_eq!(m.due(t0)[0].1.uuid, Some(vec![3]));
        assert!(
            !m.acknowledge("t", &[2]),
            "a late ack of the dropped update"
        );
        assert!(m.acknowledge("t", &[3]));
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn backoff_caps_at_ten_minutes() {
        let m = StatusUpdateManager::new();
        m.enqueue("f", "t", status(1));
        let mut now = Instant::now();
        m.due(now);
        for _ in 0..20 {
            now += RETRY_MAX;
            assert_eq!(m.due(now).len(), 1);
        }
    }
}
