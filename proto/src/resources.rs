//! Helpers to build and read Mesos [`Resource`]s.
//!
//! Constructors leave `role`, reservations and allocation info unset, as
//! Mesos does for unreserved resources (`Resource::role()` then reads `"*"`).
//! Readers only look at the resource `name` and value type; they do not care
//! about roles or reservations.

use crate::mesos::v1::{Resource, value};

/// Mesos keeps scalar resource values in fixed point with three decimal
/// digits; this is the scale.
const SCALAR_SCALE: f64 = 1000.0;

/// A scalar resource such as `cpus:0.5` or `mem:128`.
pub fn scalar(name: &str, value: f64) -> Resource {
    Resource {
        name: name.to_string(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value }),
        ..Default::default()
    }
}

/// A ranges resource such as `ports:[31000-31099]`; each pair is an
/// inclusive `(begin, end)` range, kept in the given order.
pub fn ranges(name: &str, ranges: &[(u64, u64)]) -> Resource {
    Resource {
        name: name.to_string(),
        r#type: value::Type::Ranges as i32,
        ranges: Some(value::Ranges {
            range: ranges
                .iter()
                .map(|&(begin, end)| value::Range { begin, end })
                .collect(),
        }),
        ..Default::default()
    }
}

/// Sum of the scalar values of all resources named `name` (of type SCALAR),
/// `0.0` if there are none. The sum is computed in Mesos' fixed point
/// (three decimal digits), so `0.1 + 0.2` is `0.3`.
pub fn scalar_sum(resources: &[Resource], name: &str) -> f64 {
    let milli: i64 = resources
        .iter()
        .filter(|r| r.name == name && r.r#type() == value::Type::Scalar)
        .filter_map(|r| r.scalar.as_ref())
        .map(|s| (s.value * SCALAR_SCALE).round() as i64)
        .sum();
    milli as f64 / SCALAR_SCALE
}

/// All ranges of the resources named `name` (of type RANGES), sorted and
/// coalesced: overlapping or adjacent ranges are merged, and ranges with
/// `begin > end` are dropped. E.g. `[(5,6), (1,3), (4,4)]` gives `[(1,6)]`.
pub fn range_list(resources: &[Resource], name: &str) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = resources
        .iter()
        .filter(|r| r.name == name && r.r#type() == value::Type::Ranges)
        .filter_map(|r| r.ranges.as_ref())
        .flat_map(|rs| rs.range.iter().map(|r| (r.begin, r.end)))
        .filter(|&(b, e)| b <= e)
        .collect();
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (begin, end) in all {
        match merged.last_mut() {
            Some(last) if begin <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((begin, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        let cpus = scalar("cpus", 0.5);
        assert_eq!(cpus.name, "cpus");
        assert_eq!(cpus.r#type(), value::Type::Scalar);
        assert_eq!(cpus.scalar.unwrap().value, 0.5);
        assert_eq!(cpus.role, None);
        assert_eq!(cpus.role(), "*");
        let ports = ranges("ports", &[(31000, 31099), (32000, 32000)]);
        assert_eq!(ports.r#type(), value::Type::Ranges);
        assert_eq!(ports.ranges.unwrap().range.len(), 2);
    }

    #[test]
    fn readers() {
        let rs = vec![
            scalar("cpus", 0.1),
            scalar("cpus", 0.2),
            scalar("mem", 256.0),
            ranges("ports", &[(5, 6), (1, 3)]),
            ranges("ports", &[(4, 4), (10, 12), (11, 20)]),
            ranges("other", &[(100, 200)]),
        ];
        assert_eq!(scalar_sum(&rs, "cpus"), 0.3);
        assert_eq!(scalar_sum(&rs, "mem"), 256.0);
        assert_eq!(scalar_sum(&rs, "disk"), 0.0);
        assert_eq!(range_list(&rs, "ports"), vec![(1, 6), (10, 20)]);
        assert_eq!(range_list(&rs, "cpus"), vec![]);
        assert_eq!(
            range_list(&[ranges("p", &[(0, u64::MAX), (3, 4)])], "p"),
            vec![(0, u64::MAX)]
        );
    }
}
