use std::io::Read;

use super::{
    entries::{Whiteout, components, parse_pax_time, whiteout, xattr_allowed},
    *,
};

#[test]
fn path_components() {
    assert_eq!(components(b"a/b/c").unwrap(), [&b"a"[..], b"b", b"c"]);
    assert_eq!(
        components(b"/etc//passwd").unwrap(),
        [&b"etc"[..], b"passwd"]
    );
    assert_eq!(components(b"./x/./y/").unwrap(), [&b"x"[..], b"y"]);
    assert!(components(b"./").unwrap().is_empty());
    assert!(components(b"a/../b").is_err());
    assert!(components(b"..").is_err());
    assert!(components(b"a/..").is_err());
    assert_eq!(
        components(b"a/..b/c..").unwrap(),
        [&b"a"[..], b"..b", b"c.."]
    );
}

#[test]
fn whiteout_conversion_rules() {
    assert_eq!(whiteout(b".wh.passwd"), Whiteout::Remove(b"passwd"));
    assert_eq!(whiteout(b".wh..wh..opq"), Whiteout::Opaque);
    assert_eq!(whiteout(b".wh..wh.plnk"), Whiteout::Ignore);
    assert_eq!(whiteout(b".wh..wh.aufs"), Whiteout::Ignore);
    assert_eq!(whiteout(b"passwd"), Whiteout::None);
    assert_eq!(whiteout(b"x.wh.y"), Whiteout::None);
    assert_eq!(whiteout(b".wh."), Whiteout::Remove(b""));
}

#[test]
fn restored_xattrs() {
    assert!(xattr_allowed("user.mime_type"));
    assert!(xattr_allowed("trusted.md5"));
    assert!(!xattr_allowed("trusted.overlay.opaque"));
    assert!(!xattr_allowed("trusted.overlay.redirect"));
    assert!(!xattr_allowed("security.capability"));
    assert!(!xattr_allowed("security.selinux"));
    assert!(!xattr_allowed("system.posix_acl_access"));
}

#[test]
fn pax_times() {
    let t = parse_pax_time("1700000000.5").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 500_000_000));
    let t = parse_pax_time("12").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (12, 0));
    let t = parse_pax_time("1.0123456789").unwrap();
    assert_eq!(t.tv_nsec(), 12_345_678);
    assert!(parse_pax_time("soon").is_none());
}

#[test]
fn limited_reader_allows_exactly_the_cap() {
    let data = [7u8; 100];
    let mut exact = LimitedReader {
        inner: &data[..],
        left: 100,
    };
    let mut out = Vec::new();
    exact.read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), 100);
    let mut over = LimitedReader {
        inner: &data[..],
        left: 99,
    };
    let err = over.read_to_end(&mut Vec::new()).unwrap_err();
    let options = UnpackOptions {
        max_bytes: 99,
        ..Default::default()
    };
    assert!(matches!(
        read_error(err, "x", &options),
        UnpackError::TooLarge { limit: 99, .. }
    ));
}
