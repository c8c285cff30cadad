//! TO BE WRITTEN: Mesos protocol types.
