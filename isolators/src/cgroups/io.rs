//! Block io: per-device caps (`io.max`; v1 `blkio.throttle.*_device`), the proportional weight
//! (`io.weight`; v1 `blkio.weight` or `blkio.bfq.weight`), and the byte counters read for usage.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::CgroupError;
use crate::IoMax;

/// An io cap on one block device, resolved to its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IoLimit {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) rbps: Option<u64>,
    pub(super) wbps: Option<u64>,
    pub(super) riops: Option<u64>,
    pub(super) wiops: Option<u64>,
}

impl IoLimit {
    /// Resolves `max.device` ("MAJ:MIN", or the path of a block device node, via `stat(2)`).
    pub(super) fn resolve(max: &IoMax) -> Result<IoLimit, CgroupError> {
        let invalid =
            |why: String| CgroupError::Invalid(format!("io_max device {:?}: {why}", max.device));
        let (major, minor) = if max.device.starts_with('/') {
            let meta =
                std::fs::metadata(&max.device).map_err(|e| invalid(format!("cannot stat: {e}")))?;
            if !meta.file_type().is_block_device() {
                return Err(invalid("not a block device node".into()));
            }
            (libc::major(meta.rdev()), libc::minor(meta.rdev()))
        } else {
            parse_maj_min(&max.device).ok_or_else(|| {
                invalid("expected \"MAJ:MIN\" or the absolute path of a block device".into())
            })?
        };
        let limit = IoLimit {
            major,
            minor,
            rbps: max.rbps,
            wbps: max.wbps,
            riops: max.riops,
            wiops: max.wiops,
        };
        if limit.fields().iter().any(|(_, v)| *v == Some(0)) {
            return Err(invalid(
                "a rate of 0 would block all io; leave it unset for no cap".into(),
            ));
        }
        if limit.fields().iter().all(|(_, v)| v.is_none()) {
            return Err(invalid("no rate given (rbps, wbps, riops or wiops)".into()));
        }
        Ok(limit)
    }

    fn fields(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("rbps", self.rbps),
            ("wbps", self.wbps),
            ("riops", self.riops),
            ("wiops", self.wiops),
        ]
    }

    /// The `io.max` line: every key, `max` where no cap is given (so a re-prepare resets it).
    pub(super) fn v2_line(&self) -> String {
        let mut line = format!("{}:{}", self.major, self.minor);
        for (key, value) in self.fields() {
            match value {
                Some(v) => line.push_str(&format!(" {key}={v}")),
                None => line.push_str(&format!(" {key}=max")),
            }
        }
        line
    }

    /// The v1 throttle files and the line for each (`MAJ:MIN N`; `0` removes a cap).
    pub(super) fn v1_lines(&self) -> [(&'static str, String); 4] {
        let line = |v: Option<u64>| format!("{}:{} {}", self.major, self.minor, v.unwrap_or(0));
        [
            ("blkio.throttle.read_bps_device", line(self.rbps)),
            ("blkio.throttle.write_bps_device", line(self.wbps)),
            ("blkio.throttle.read_iops_device", line(self.riops)),
            ("blkio.throttle.write_iops_device", line(self.wiops)),
        ]
    }
}

fn parse_maj_min(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// v1 `blkio.weight` (10..=1000) from the v2 weight (1..=10000): the inverse of runc's v1→v2
/// conversion `1 + (v1 - 10) * 9999 / 990`.
pub(super) fn blkio_weight(v2: u16) -> u64 {
    let v2 = u64::from(v2.clamp(1, 10_000));
    10 + (v2 - 1) * 990 / 9999
}

/// Sums `rbytes`/`wbytes` over the device lines of v2 `io.stat`
/// (`8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`).
pub(super) fn io_stat_bytes(content: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut write = 0u64;
    for line in content.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "rbytes" => read = read.saturating_add(value),
                "wbytes" => write = write.saturating_add(value),
                _ => {}
            }
        }
    }
    (read, write)
}

/// Sums the `Read`/`Write` device lines of v1 `blkio.throttle.io_service_bytes[_recursive]`
/// (`8:0 Read 4096`, ..., and a final `Total N` line that is not a device).
pub(super) fn blkio_service_bytes(content: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut write = 0u64;
    for line in content.lines() {
        let mut it = line.split_whitespace();
        let (Some(dev), Some(op), Some(value)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if parse_maj_min(dev).is_none() {
            continue;
        }
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => write = write.saturating_add(value),
            _ => {}
        }
    }
    (read, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(device: &str, wbps: Option<u64>) -> IoMax {
        IoMax {
            device: device.into(),
            wbps,
            ..Default::default()
        }
    }

    #[test]
    fn lines() {
        let mut m = max("7:3", Some(1 << 20));
        m.riops = Some(100);
        let l = IoLimit::resolve(&m).unwrap();
        assert_eq!(l.v2_line(), "7:3 rbps=max wbps=1048576 riops=100 wiops=max");
        let v1 = l.v1_lines();
        assert_eq!(
            v1[0],
            ("blkio.throttle.read_bps_device", "7:3 0".to_string())
        );
        assert_eq!(
            v1[1],
            ("blkio.throttle.write_bps_device", "7:3 1048576".to_string())
        );
        assert_eq!(v1[2].1, "7:3 100");
        assert_eq!(v1[3].1, "7:3 0");
    }

    #[test]
    fn devices_are_resolved_or_refused() {
        for (device, wbps, needle) in [
            ("/dev/null", Some(1), "not a block device"),
            ("/nonexistent", Some(1), "cannot stat"),
            ("sda", Some(1), "MAJ:MIN"),
            ("8:x", Some(1), "MAJ:MIN"),
            ("8:0", Some(0), "rate of 0"),
            ("8:0", None, "no rate"),
        ] {
            let err = IoLimit::resolve(&max(device, wbps)).unwrap_err();
            assert!(matches!(err, CgroupError::Invalid(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(needle) && msg.contains(device), "{msg}");
        }
    }

    #[test]
    fn weights() {
        assert_eq!(blkio_weight(1), 10);
        assert_eq!(blkio_weight(10_000), 1000);
        assert_eq!(blkio_weight(100), 19);
        assert_eq!(blkio_weight(5000), 504);
        assert_eq!(blkio_weight(0), 10, "clamped");
    }

    #[test]
    fn byte_counters() {
        let v2 = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
                  7:1 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(io_stat_bytes(v2), (4097, 8194));
        assert_eq!(io_stat_bytes(""), (0, 0));
        let v1 = "7:0 Read 100\n7:0 Write 200\n7:0 Sync 300\n7:0 Async 0\n7:0 Discard 0\n\
                  7:0 Total 300\n8:0 Read 1\n8:0 Write 2\nTotal 303\n";
        assert_eq!(blkio_service_bytes(v1), (101, 202));
        assert_eq!(blkio_service_bytes("Total 0\n"), (0, 0));
    }
}
