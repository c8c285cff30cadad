//! mount(8)/OCI-style mount options ("rbind", "ro", "nosuid", "mode=755", ...) turned into
//! `mount(2)` flags, `mount_setattr` attributes and the filesystem's data string. Pure.

use nix::mount::MsFlags;

use super::sys::{
    MOUNT_ATTR_ATIME_MASK, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV, MOUNT_ATTR_NODIRATIME,
    MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MOUNT_ATTR_RELATIME,
    MOUNT_ATTR_STRICTATIME,
};

/// A bind mount, and whether it takes the mounts below its source along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// "bind": only the mount at the source.
    Plain,
    /// "rbind": the source and every mount below it.
    Recursive,
}

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags asked for ("ro", "nosuid", "strictatime", ...).
    pub set: MsFlags,
    /// Flags explicitly turned off ("rw", "suid", "exec", ...).
    pub clear: MsFlags,
    /// "bind" or "rbind".
    pub bind: Option<Bind>,
    /// Propagation change ("rprivate" = `MS_PRIVATE | MS_REC`, ...).
    pub propagation: Option<MsFlags>,
    /// Everything else, comma-joined, for the filesystem ("mode=755,size=65536k").
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            set: MsFlags::empty(),
            clear: MsFlags::empty(),
            bind: None,
            propagation: None,
            data: String::new(),
        }
    }
}

const ATIME_FLAGS: MsFlags = MsFlags::MS_NOATIME
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

/// Flag options: name, flag, whether the option sets (true) or clears (false) it.
const FLAGS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("norelatime", MsFlags::MS_RELATIME, false),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("diratime", MsFlags::MS_NODIRATIME, false),
];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// Parses mount options; later options override earlier ones ("ro,rw" is rw). Unknown words
/// go to the data string, where the filesystem judges them. Bind mounts take no data.
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let opt = opt.as_ref();
        if let Some(&(_, flag, on)) = FLAGS.iter().find(|(n, _, _)| *n == opt) {
            if on {
                // One access-time mode at a time.
                if ATIME_FLAGS.contains(flag) {
                    o.set.remove(ATIME_FLAGS);
                }
                o.set.insert(flag);
                o.clear.remove(flag);
            } else {
                o.clear.insert(flag);
                o.set.remove(flag);
            }
        } else if let Some(&(_, p)) = PROPAGATION.iter().find(|(n, _)| *n == opt) {
            o.propagation = Some(p);
        } else {
            match opt {
                "bind" => o.bind = Some(Bind::Plain),
                "rbind" => o.bind = Some(Bind::Recursive),
                "defaults" | "" => {}
                "remount" | "move" | "loud" | "silent" => {
                    return Err(format!("mount option {opt:?} is not supported"));
                }
                _ if opt.contains(',') => {
                    return Err(format!("mount option {opt:?} contains a comma"));
                }
                _ => data.push(opt),
            }
        }
    }
    if o.bind.is_some() && !data.is_empty() {
        return Err(format!(
            "bind mounts take no filesystem options, got {:?}",
            data.join(",")
        ));
    }
    o.data = data.join(",");
    Ok(o)
}

impl MountOptions {
    /// The `mount_setattr` (set, clear) attributes equivalent to the flags, for bind mounts.
    /// `sync`/`dirsync` have no per-mount attribute and are refused.
    pub fn mount_attr(&self) -> Result<(u64, u64), String> {
        if self
            .set
            .intersects(MsFlags::MS_SYNCHRONOUS | MsFlags::MS_DIRSYNC)
        {
            return Err("sync/dirsync cannot be applied to a bind mount".into());
        }
        const PAIRS: [(MsFlags, u64); 5] = [
            (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
            (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
        ];
        let (mut set, mut clr) = (0, 0);
        for (flag, attr) in PAIRS {
            if self.set.contains(flag) {
                set |= attr;
            } else if self.clear.contains(flag) {
                clr |= attr;
            }
        }
        let atime = if self.set.contains(MsFlags::MS_NOATIME) {
            Some(MOUNT_ATTR_NOATIME)
        } else if self.set.contains(MsFlags::MS_STRICTATIME) {
            Some(MOUNT_ATTR_STRICTATIME)
        } else if self.set.contains(MsFlags::MS_RELATIME) {
            Some(MOUNT_ATTR_RELATIME)
        } else {
            None
        };
        if let Some(a) = atime {
            // The access-time mode is one field: clear it whole, then set the chosen value.
            clr |= MOUNT_ATTR_ATIME_MASK;
            set |= a;
        }
        Ok((set, clr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_split() {
        let o = parse_options(&["nosuid", "strictatime", "mode=755", "size=65536k"]).unwrap();
        assert_eq!(o.set, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.bind, None);
        let o = parse_options(&["newinstance", "ptmxmode=0666", "mode=0620", "noexec"]).unwrap();
        assert_eq!(o.set, MsFlags::MS_NOEXEC);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620");
        assert_eq!(parse_options::<&str>(&[]).unwrap(), MountOptions::default());
    }

    #[test]
    fn later_options_win() {
        let o = parse_options(&["ro", "rw"]).unwrap();
        assert!(!o.set.contains(MsFlags::MS_RDONLY) && o.clear.contains(MsFlags::MS_RDONLY));
        let o = parse_options(&["rw", "ro"]).unwrap();
        assert!(o.set.contains(MsFlags::MS_RDONLY) && !o.clear.contains(MsFlags::MS_RDONLY));
        let o = parse_options(&["noatime", "relatime"]).unwrap();
        assert_eq!(o.set, MsFlags::MS_RELATIME);
        let o = parse_options(&["private", "rslave"]).unwrap();
        assert_eq!(o.propagation, Some(MsFlags::MS_SLAVE | MsFlags::MS_REC));
    }

    #[test]
    fn binds() {
        let o = parse_options(&["rbind", "ro", "nosuid", "nodev"]).unwrap();
        assert_eq!(o.bind, Some(Bind::Recursive));
        assert_eq!(
            o.mount_attr().unwrap(),
            (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0)
        );
        let o = parse_options(&["bind", "rw", "exec"]).unwrap();
        assert_eq!(o.bind, Some(Bind::Plain));
        assert_eq!(
            o.mount_attr().unwrap(),
            (0, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC)
        );
        let o = parse_options(&["bind", "strictatime"]).unwrap();
        assert_eq!(
            o.mount_attr().unwrap(),
            (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR_ATIME_MASK)
        );
        assert!(parse_options(&["rbind", "mode=755"]).is_err());
        assert!(
            parse_options(&["bind", "sync"])
                .unwrap()
                .mount_attr()
                .is_err()
        );
    }

    #[test]
    fn unsupported_options_are_refused() {
        assert!(parse_options(&["remount"]).is_err());
        assert!(parse_options(&["move"]).is_err());
        assert!(parse_options(&["mode=1,size=2"]).is_err());
    }
}
