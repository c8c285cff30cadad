//! The shim's side of a user namespace: the cloned init's uid and gid maps, written from the
//! parent (which holds `CAP_SETUID`/`CAP_SETGID` on the host) before the init is released.
//!
//! `setgroups` is left at "allow": the writer is privileged, so the kernel does not require
//! "deny", and the init needs `setgroups(2)` to drop the supplementary groups it inherited
//! from the shim (host gid 0!), which would otherwise keep host-group access to the host's
//! files inside the container (see `init::setup_container`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::protocol::{IdMapRange, IdMaps};

use super::ShimError;

/// Most lines a `uid_map`/`gid_map` accepts (Linux ≥ 4.15).
const MAX_LINES: usize = 340;

/// The text of a `uid_map`/`gid_map` (`inside outside count` lines), checked: at least one
/// range, no empty or overflowing range, no overlap inside or outside.
pub fn format_map(what: &str, ranges: &[IdMapRange]) -> Result<String, String> {
    if ranges.is_empty() || ranges.len() > MAX_LINES {
        return Err(format!(
            "{what} needs 1 to {MAX_LINES} ranges, has {}",
            ranges.len()
        ));
    }
    let end = |start: u32, size: u32| start.checked_add(size);
    let mut out = String::new();
    for (i, r) in ranges.iter().enumerate() {
        if r.size == 0 || end(r.container_id, r.size).is_none() || end(r.host_id, r.size).is_none()
        {
            return Err(format!("{what} range {r:?} is empty or overflows"));
        }
        for o in &ranges[..i] {
            let overlap = |a: u32, b: u32| a < b + o.size && b < a + r.size;
            if overlap(r.container_id, o.container_id) || overlap(r.host_id, o.host_id) {
                return Err(format!("{what} ranges {o:?} and {r:?} overlap"));
            }
        }
        let _ = writeln!(out, "{} {} {}", r.container_id, r.host_id, r.size);
    }
    Ok(out)
}

/// Checks both maps.
pub fn validate(maps: &IdMaps) -> Result<(), String> {
    format_map("uid_map", &maps.uid_map)?;
    format_map("gid_map", &maps.gid_map).map(drop)
}

/// Writes `gid_map` then `uid_map` of process `pid` under `proc_root` (`/proc`), each in the
/// single `write(2)` the kernel demands.
pub fn write_id_maps(proc_root: &Path, pid: i32, maps: &IdMaps) -> Result<(), ShimError> {
    let dir = proc_root.join(pid.to_string());
    for (file, ranges) in [("gid_map", &maps.gid_map), ("uid_map", &maps.uid_map)] {
        let path = dir.join(file);
        let text = format_map(file, ranges).map_err(ShimError::InvalidConfig)?;
        let werr = |source| ShimError::Write {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(werr)?;
        let n = f.write(text.as_bytes()).map_err(werr)?;
        if n != text.len() {
            return Err(werr(std::io::Error::other(format!(
                "short write ({n} of {} bytes)",
                text.len()
            ))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(c: u32, h: u32, s: u32) -> IdMapRange {
        IdMapRange {
            container_id: c,
            host_id: h,
            size: s,
        }
    }

    #[test]
    fn maps_are_formatted_and_checked() {
        assert_eq!(
            format_map("uid_map", &[r(0, 100000, 65536)]).unwrap(),
            "0 100000 65536\n"
        );
        assert_eq!(
            format_map("m", &[r(0, 1000, 1), r(1, 100000, 65535)]).unwrap(),
            "0 1000 1\n1 100000 65535\n"
        );
        assert!(format_map("m", &[]).is_err());
        assert!(format_map("m", &[r(0, 1, 0)]).is_err());
        assert!(format_map("m", &[r(0, u32::MAX, 2)]).is_err());
        assert!(format_map("m", &[r(0, 100, 10), r(5, 1000, 10)]).is_err());
        assert!(format_map("m", &[r(0, 100, 10), r(10, 105, 10)]).is_err());
    }

    #[test]
    fn maps_are_written_in_one_write_each() {
        let d = tempfile::tempdir().unwrap();
        let pdir = d.path().join("42");
        std::fs::create_dir(&pdir).unwrap();
        std::fs::write(pdir.join("uid_map"), "").unwrap();
        std::fs::write(pdir.join("gid_map"), "").unwrap();
        let maps = IdMaps {
            uid_map: vec![r(0, 100000, 65536)],
            gid_map: vec![r(0, 200000, 1000)],
        };
        write_id_maps(d.path(), 42, &maps).unwrap();
        assert_eq!(
            std::fs::read_to_string(pdir.join("uid_map")).unwrap(),
            "0 100000 65536\n"
        );
        assert_eq!(
            std::fs::read_to_string(pdir.join("gid_map")).unwrap(),
            "0 200000 1000\n"
        );
        assert!(matches!(
            write_id_maps(d.path(), 43, &maps),
            Err(ShimError::Write { .. })
        ));
    }
}
