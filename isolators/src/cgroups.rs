//! cgroups isolator (v2 primary, v1 fallback). TO BE WRITTEN: see the helper brief.
