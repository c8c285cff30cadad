//! TO BE WRITTEN
fn main() {}
