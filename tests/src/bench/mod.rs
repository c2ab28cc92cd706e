//! The modules of `s2-sink-bench` (src/bin/s2-sink-bench.rs), one job each.

pub mod ceiling;
pub mod cli;
pub mod findmax;
pub mod load;
pub mod procstat;
pub mod report;
pub mod restart;
pub mod run;
pub mod setup;
pub mod verify;
