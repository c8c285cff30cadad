use std::sync::Mutex;

use super::*;

/// The double: entries in memory, operations recorded and applied to them.
#[derive(Default)]
struct FakeKernel {
    entries: Mutex<OverlayEntries>,
    log: Mutex<Vec<OverlayOp>>,
    devices_ensured: Mutex<u32>,
}

impl OverlayKernel for &FakeKernel {
    async fn ensure_device(&self, _cfg: &OverlayConfig) -> Result<u32, OverlayError> {
        *self.devices_ensured.lock().unwrap() += 1;
        Ok(7)
    }
    async fn read(&self, index: u32) -> Result<OverlayEntries, OverlayError> {
        assert_eq!(index, 7);
        Ok(self.entries.lock().unwrap().clone())
    }
    async fn write(&self, _index: u32, ops: &[OverlayOp]) -> Result<(), OverlayError> {
        let mut e = self.entries.lock().unwrap();
        for o in ops {
            match *o {
                OverlayOp::AddRoute { dst, via } => {
                    e.routes.insert(dst, via);
                }
                OverlayOp::DelRoute { dst, .. } => {
                    e.routes.remove(&dst);
                }
                OverlayOp::AddNeighbour { ip, mac } => {
                    e.neighbours.insert(ip, mac);
                }
                OverlayOp::DelNeighbour { ip } => {
                    e.neighbours.remove(&ip);
                }
                OverlayOp::AddFdb { mac, dst } => {
                    e.fdb.insert(mac, dst);
                }
                OverlayOp::DelFdb { mac, .. } => {
                    e.fdb.remove(&mac);
                }
            }
        }
        self.log.lock().unwrap().extend_from_slice(ops);
        Ok(())
    }
    async fn delete_device(&self, _name: &str) -> Result<bool, OverlayError> {
        Ok(true)
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn peer(n: u8) -> Peer {
    Peer::new(net(&format!("9.0.{n}.0/24")), Ipv4Addr::new(44, 128, 0, n))
}

fn cfg() -> OverlayConfig {
    OverlayConfig::new("eth0", Ipv4Addr::new(44, 128, 0, 1), net("9.0.1.0/24"))
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn desired_entries_skip_self_and_reject_overlaps() {
    let state = OverlayState {
        peers: vec![peer(1), peer(2), peer(3), peer(2)],
    };
    let e = desired_entries(net("9.0.1.0/24"), Ipv4Addr::new(44, 128, 0, 1), &state).unwrap();
    assert_eq!(e.routes.len(), 2);
    assert_eq!(e.routes[&net("9.0.2.0/24")], Ipv4Addr::new(9, 0, 2, 0));
    assert_eq!(
        e.neighbours[&Ipv4Addr::new(9, 0, 3, 0)],
        vtep_mac(Ipv4Addr::new(44, 128, 0, 3))
    );
    assert_eq!(
        e.fdb[&vtep_mac(Ipv4Addr::new(44, 128, 0, 2))],
        Ipv4Addr::new(44, 128, 0, 2)
    );

    let overlapping = Peer::new(net("9.0.2.128/25"), Ipv4Addr::new(44, 128, 0, 9));
    let bad = OverlayState {
        peers: vec![peer(2), overlapping],
    };
    let err = desired_entries(net("9.0.1.0/24"), Ipv4Addr::new(44, 128, 0, 1), &bad).unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");
    let own = OverlayState {
        peers: vec![Peer::new(net("9.0.1.0/24"), Ipv4Addr::new(44, 128, 0, 5))],
    };
    assert!(desired_entries(net("9.0.1.0/24"), Ipv4Addr::new(44, 128, 0, 1), &own).is_err());
}

#[test]
fn diff_orders_deletes_before_adds_and_replaces_changed_entries() {
    let want = desired_entries(
        net("9.0.1.0/24"),
        Ipv4Addr::new(44, 128, 0, 1),
        &OverlayState {
            peers: vec![peer(2)],
        },
    )
    .unwrap();
    let mut have = desired_entries(
        net("9.0.1.0/24"),
        Ipv4Addr::new(44, 128, 0, 1),
        &OverlayState {
            peers: vec![peer(3)],
        },
    )
    .unwrap();
    // Peer 2 moved its VTEP: a stale FDB entry for its MAC pointing elsewhere.
    have.fdb
        .insert(peer(2).vtep_mac, Ipv4Addr::new(44, 128, 0, 99));
    let ops = diff(&want, &have);
    let first_add = ops
        .iter()
        .position(|o| matches!(o, OverlayOp::AddFdb { .. }))
        .unwrap();
    assert!(ops[..first_add].iter().all(|o| matches!(
        o,
        OverlayOp::DelRoute { .. } | OverlayOp::DelNeighbour { .. } | OverlayOp::DelFdb { .. }
    )));
    assert!(ops.contains(&OverlayOp::DelRoute {
        dst: net("9.0.3.0/24"),
        via: Ipv4Addr::new(9, 0, 3, 0)
    }));
    assert!(ops.contains(&OverlayOp::AddFdb {
        mac: peer(2).vtep_mac,
        dst: Ipv4Addr::new(44, 128, 0, 2)
    }));
    assert_eq!(ops.len(), 3 + 1 + 3, "{ops:#?}");
    assert!(diff(&want, &want).is_empty());
}

#[test]
fn apply_converges_removes_stale_and_is_idempotent() {
    let fake = FakeKernel::default();
    // Planted by hand: a route and a neighbour nobody wants.
    fake.entries
        .lock()
        .unwrap()
        .routes
        .insert(net("9.0.77.0/24"), Ipv4Addr::new(9, 0, 77, 0));
    fake.entries
        .lock()
        .unwrap()
        .neighbours
        .insert(Ipv4Addr::new(9, 0, 77, 0), [2, 0, 0, 0, 0, 1]);
    let ov = Overlay::new(&fake, cfg());
    let all = OverlayState {
        peers: vec![peer(1), peer(2), peer(3)],
    };
    let r = block_on(ov.apply(&all)).unwrap();
    assert_eq!(r.ops.len(), 2 + 6);
    assert_eq!(fake.entries.lock().unwrap().routes.len(), 2);
    assert!(
        block_on(ov.apply(&all)).unwrap().ops.is_empty(),
        "second apply must be a no-op"
    );
    // Peer 3 leaves: its three entries go, nothing else changes.
    let r = block_on(ov.apply(&OverlayState {
        peers: vec![peer(2)],
    }))
    .unwrap();
    assert_eq!(r.ops.len(), 3, "{:#?}", r.ops);
    let e = fake.entries.lock().unwrap().clone();
    assert_eq!(
        e.routes.keys().collect::<Vec<_>>(),
        vec![&net("9.0.2.0/24")]
    );
    assert_eq!(e.fdb.len(), 1);
    assert_eq!(*fake.devices_ensured.lock().unwrap(), 3);
}
