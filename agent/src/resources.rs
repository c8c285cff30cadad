//! Node resources: detection, the Mesos `--resources` syntax (`cpus:4;mem:8192;ports:[31000-32000]`),
//! attributes (`rack:r1;zone:a`), and a small arithmetic of scalar + range resources used for offers.

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr};

use berth_proto::mesos::v1 as mesos;
use serde::Serialize;

/// Errors parsing resources or attributes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourcesError {
    /// An entry without `name:value`.
    #[error("resource entry {0:?}: expected NAME:VALUE")]
    Entry(String),
    /// A scalar that is not a finite non-negative number.
    #[error("resource {name}: {value:?} is not a non-negative number")]
    Scalar {
        /// Resource name.
        name: String,
        /// The text given.
        value: String,
    },
    /// A range list that does not parse.
    #[error("resource {name}: {value:?} is not a range list like [31000-32000,33000-33010]")]
    Ranges {
        /// Resource name.
        name: String,
        /// The text given.
        value: String,
    },
}

/// A set of scalar and range resources (what an offer or a task holds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSet {
    /// Scalars by name (cpus, mem in MB, disk in MB, ...).
    pub scalars: BTreeMap<String, f64>,
    /// Ranges by name (ports), kept sorted and merged.
    pub ranges: BTreeMap<String, Vec<(u64, u64)>>,
}

const EPSILON: f64 = 1e-6;

impl ResourceSet {
    /// A scalar's value (0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.get(name).copied().unwrap_or(0.0)
    }

    /// True when nothing worth offering is left.
    pub fn is_empty(&self) -> bool {
        self.scalars.values().all(|v| *v < EPSILON) && self.ranges.values().all(|r| r.is_empty())
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ResourceSet) {
        for (name, value) in &other.scalars {
            *self.scalars.entry(name.clone()).or_default() += value;
        }
        for (name, ranges) in &other.ranges {
            let entry = self.ranges.entry(name.clone()).or_default();
            entry.extend(ranges.iter().copied());
            *entry = merge_ranges(std::mem::take(entry));
        }
    }

    /// Removes `other` from `self` (saturating; callers check `contains` first).
    pub fn subtract(&mut self, other: &ResourceSet) {
        for (name, value) in &other.scalars {
            let entry = self.scalars.entry(name.clone()).or_default();
            *entry = (*entry - value).max(0.0);
            if *entry < EPSILON {
                *entry = 0.0;
            }
        }
        for (name, ranges) in &other.ranges {
            if let Some(mine) = self.ranges.get_mut(name) {
                for &(begin, end) in ranges {
                    *mine = remove_range(std::mem::take(mine), begin, end);
                }
            }
        }
    }

    /// Whether every resource in `other` is available in `self`.
    pub fn contains(&self, other: &ResourceSet) -> bool {
        self.missing(other).is_none()
    }

    /// The first resource of `other` that `self` lacks, described for an error message.
    pub fn missing(&self, other: &ResourceSet) -> Option<String> {
        for (name, value) in &other.scalars {
            let have = self.scalar(name);
            if *value > have + EPSILON {
                return Some(format!(
                    "{name} {} > available {}",
                    fmt_num(*value),
                    fmt_num(have)
                ));
            }
        }
        for (name, ranges) in &other.ranges {
            let mine = self.ranges.get(name).map(Vec::as_slice).unwrap_or(&[]);
            for &(begin, end) in ranges {
                if !mine.iter().any(|&(b, e)| b <= begin && end <= e) {
                    return Some(format!("{name} [{begin}-{end}] not available"));
                }
            }
        }
        None
    }

    /// From Mesos protobuf resources (unknown types are ignored).
    pub fn from_proto(resources: &[mesos::Resource]) -> Self {
        let mut set = ResourceSet::default();
        for resource in resources {
            if let Some(scalar) = &resource.scalar {
                *set.scalars.entry(resource.name.clone()).or_default() += scalar.value;
            }
            if let Some(ranges) = &resource.ranges {
                let entry = set.ranges.entry(resource.name.clone()).or_default();
                entry.extend(ranges.range.iter().map(|r| (r.begin, r.end)));
                *entry = merge_ranges(std::mem::take(entry));
            }
        }
        set
    }

    /// To Mesos protobuf resources.
    pub fn to_proto(&self) -> Vec<mesos::Resource> {
        let mut out = Vec::new();
        for (name, value) in &self.scalars {
            if *value > EPSILON {
                out.push(berth_proto::resources::scalar(name, *value));
            }
        }
        for (name, ranges) in &self.ranges {
            if !ranges.is_empty() {
                out.push(berth_proto::resources::ranges(name, ranges));
            }
        }
        out
    }
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .scalars
            .iter()
            .map(|(n, v)| format!("{n}:{}", fmt_num(*v)))
            .collect();
        for (name, ranges) in &self.ranges {
            let list: Vec<String> = ranges.iter().map(|(b, e)| format!("{b}-{e}")).collect();
            parts.push(format!("{name}:[{}]", list.join(",")));
        }
        f.write_str(&parts.join(";"))
    }
}

impl FromStr for ResourceSet {
    type Err = ResourcesError;

    /// Parses the Mesos agent `--resources` text syntax.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = ResourceSet::default();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry
                .split_once(':')
                .ok_or_else(|| ResourcesError::Entry(entry.to_string()))?;
            // Mesos allows `name(role):value`; berth has no roles yet, so the role is dropped.
            let name = name.split('(').next().unwrap_or(name).trim().to_string();
            let value = value.trim();
            if value.starts_with('[') {
                let ranges = parse_ranges(value).ok_or_else(|| ResourcesError::Ranges {
                    name: name.clone(),
                    value: value.to_string(),
                })?;
                let entry = set.ranges.entry(name).or_default();
                entry.extend(ranges);
                *entry = merge_ranges(std::mem::take(entry));
            } else {
                let number: f64 = value
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| ResourcesError::Scalar {
                        name: name.clone(),
                        value: value.to_string(),
                    })?;
                set.scalars.insert(name, number);
            }
        }
        Ok(set)
    }
}

fn parse_ranges(text: &str) -> Option<Vec<(u64, u64)>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, e) = part.split_once('-')?;
        let (b, e): (u64, u64) = (b.trim().parse().ok()?, e.trim().parse().ok()?);
        if b > e {
            return None;
        }
        out.push((b, e));
    }
    Some(out)
}

fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (b, e) in ranges {
        match out.last_mut() {
            Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((b, e)),
        }
    }
    out
}

fn remove_range(ranges: Vec<(u64, u64)>, begin: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (b, e) in ranges {
        if e < begin || b > end {
            out.push((b, e));
            continue;
        }
        if b < begin {
            out.push((b, begin - 1));
        }
        if e > end {
            out.push((end + 1, e));
        }
    }
    out
}

/// Parses `--attributes` (`rack:r1;zone:a`) into Mesos text attributes.
/// A Mesos TEXT attribute.
pub fn text_attribute(name: &str, value: &str) -> mesos::Attribute {
    let mut attribute = mesos::Attribute {
        name: name.to_string(),
        text: Some(mesos::value::Text {
            value: value.to_string(),
        }),
        ..Default::default()
    };
    attribute.set_type(mesos::value::Type::Text);
    attribute
}

/// Parses `--attributes`.
pub fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, ResourcesError> {
    text.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            entry
                .split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ResourcesError::Entry(entry.to_string()))
        })
        .collect()
}

/// Detects this node's resources the way the Mesos agent does: all cpus the agent may run on,
/// total memory minus a reserve for the system, the disk of the work dir minus a reserve, and the
/// default ports range. `proc_root` is normally `/proc`.
pub fn detect(proc_root: &Path, work_dir: &Path) -> ResourceSet {
    let mut set = ResourceSet::default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    set.scalars.insert("cpus".into(), cpus as f64);
    let mem_total_mb = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024);
    set.scalars
        .insert("mem".into(), reserve(mem_total_mb) as f64);
    if let Ok(stat) = nix::sys::statvfs::statvfs(work_dir) {
        let total_mb = stat.blocks() * stat.fragment_size() / (1024 * 1024);
        set.scalars.insert("disk".into(), reserve(total_mb) as f64);
    }
    set.ranges.insert("ports".into(), vec![(31000, 32000)]);
    set
}

/// Mesos's rule: leave half of the total for the system when under 2 GB, else 1 GB.
fn reserve(total_mb: u64) -> u64 {
    if total_mb >= 2048 {
        total_mb - 1024
    } else {
        total_mb / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mesos_resource_syntax() {
        let set: ResourceSet = "cpus:4;mem:8192;disk(*):100;ports:[31000-32000,40000-40010]"
            .parse()
            .unwrap();
        assert_eq!(set.scalar("cpus"), 4.0);
        assert_eq!(set.scalar("disk"), 100.0);
        assert_eq!(set.ranges["ports"], vec![(31000, 32000), (40000, 40010)]);
        assert!(matches!(
            "cpus".parse::<ResourceSet>(),
            Err(ResourcesError::Entry(_))
        ));
        assert!(matches!(
            "cpus:-1".parse::<ResourceSet>(),
            Err(ResourcesError::Scalar { .. })
        ));
        assert!(matches!(
            "ports:[5-1]".parse::<ResourceSet>(),
            Err(ResourcesError::Ranges { .. })
        ));
    }

    #[test]
    fn arithmetic_of_scalars_and_ranges() {
        let mut total: ResourceSet = "cpus:2;mem:1024;ports:[100-200]".parse().unwrap();
        let task: ResourceSet = "cpus:0.5;mem:64;ports:[150-150]".parse().unwrap();
        assert!(total.contains(&task));
        total.subtract(&task);
        assert_eq!(total.scalar("cpus"), 1.5);
        assert_eq!(total.ranges["ports"], vec![(100, 149), (151, 200)]);
        assert!(!total.contains(&task));
        assert_eq!(
            total.missing(&task).unwrap(),
            "ports [150-150] not available"
        );
        total.add(&task);
        assert_eq!(total.ranges["ports"], vec![(100, 200)]);
        let big: ResourceSet = "cpus:1000".parse().unwrap();
        assert_eq!(total.missing(&big).unwrap(), "cpus 1000 > available 2");
    }

    #[test]
    fn proto_round_trip() {
        let set: ResourceSet = "cpus:2;mem:512;ports:[1-2]".parse().unwrap();
        assert_eq!(ResourceSet::from_proto(&set.to_proto()), set);
    }

    #[test]
    fn attributes_and_detection() {
        assert_eq!(
            parse_attributes("rack:r1; zone:a").unwrap(),
            vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())]
        );
        assert!(parse_attributes("rack").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemTotal:        4194304 kB\n").unwrap();
        let set = detect(dir.path(), dir.path());
        assert_eq!(set.scalar("mem"), 3072.0);
        assert!(set.scalar("cpus") >= 1.0);
        assert!(set.scalar("disk") > 0.0);
    }
}
