//! Master election through ZooKeeper, as Mesos masters do it: each master creates an
//! ephemeral sequential znode `json.info_<seq>` holding its `MasterInfo` as JSON under the
//! group path (e.g. `/mesos`); the member with the lowest sequence leads. Agents and
//! frameworks find the leader with the same rule ([`crate::mesos::detector`]). When the
//! master's session expires its znode is gone; it stops leading and joins again.

use std::time::Duration;

use berth_proto::mesos::v1 as mesos;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mesos::{
    detector::{self, DetectError, DetectOptions, MasterLeader, MasterSource},
    zk::{SessionState, create_flags},
};

/// Joins the masters' group at `zk_url` (`zk://host:port,.../path`) with `info`; reports
/// whether this master leads, and who does.
pub async fn contend(
    zk_url: &str,
    info: mesos::MasterInfo,
    session_timeout: Duration,
) -> Result<(watch::Receiver<bool>, watch::Receiver<Option<MasterLeader>>), DetectError> {
    let MasterSource::ZooKeeper(url) = detector::parse_master(zk_url)? else {
        return Err(DetectError::BadMaster {
            value: zk_url.to_string(),
            reason: "--zk needs a zk:// URL".into(),
        });
    };
    let my_pid = info.pid.clone().unwrap_or_default();
    let data = serde_json::to_vec(&berth_proto::codec::to_json(&info)).unwrap_or_default();
    let detector = detector::detect_with(
        zk_url,
        DetectOptions {
            zk_session_timeout: session_timeout,
        },
    )
    .await?;
    let (leading_tx, leading_rx) = watch::channel(false);
    let (client, acl) = detector::zk_session(&url, session_timeout)?;
    // Membership: (re)create our znode whenever a new session starts.
    let path = url.path.clone();
    tokio::spawn(async move {
        let mut state = client.state();
        let mut member_of_session: Option<i64> = None;
        loop {
            let session = match *state.borrow_and_update() {
                SessionState::Connected { session_id, .. } => Some(session_id),
                _ => None,
            };
            if let Some(session_id) = session
                && member_of_session != Some(session_id)
            {
                let joined = async {
                    client.create_all(&path, &acl).await?;
                    client
                        .create(
                            &format!("{path}/json.info_"),
                            &data,
                            &acl,
                            create_flags::EPHEMERAL_SEQUENTIAL,
                        )
                        .await
                }
                .await;
                match joined {
                    Ok(node) => {
                        info!(node, "joined the masters' group");
                        member_of_session = Some(session_id);
                    }
                    Err(err) => {
                        warn!(error = %err, "joining the masters' group failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    // Leadership: the detector's leader is us.
    let leader_out = detector.leader();
    let mut leader = detector.leader();
    tokio::spawn(async move {
        let _detector = detector;
        loop {
            let leads = leader
                .borrow_and_update()
                .as_ref()
                .is_some_and(|l| l.pid == my_pid);
            if *leading_tx.borrow() != leads {
                info!(leading = leads, pid = %my_pid, "master leadership changed");
                let _ = leading_tx.send(leads);
            }
            if leader.changed().await.is_err() {
                return;
            }
        }
    });
    Ok((leading_rx, leader_out))
}
