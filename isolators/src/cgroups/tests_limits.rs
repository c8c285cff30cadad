//! Fixture tests of the limits added for issue 5.
