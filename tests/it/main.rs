//! Integration tests of the compactor host: the built-in policies run as
//! components, the sandbox against hostile components, and the command line.

mod cli;
mod compaction;
mod plan;
mod s3;
mod policies;
mod sandbox;
mod sdk;
mod util;
