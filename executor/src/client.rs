//! Client side of the shim protocol (used by the containerizer). TO BE WRITTEN: see the brief.
