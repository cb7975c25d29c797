//! Integration tests of the compactor host: the built-in policies run as
//! components, the sandbox against hostile components, and the command line.

mod api;
mod author_kit;
mod azure;
mod cli;
mod cluster;
mod compaction;
mod engines;
mod fast_path;
mod files;
mod kit;
mod names;
mod plan;
mod policies;
mod raw;
mod s3;
mod sandbox;
mod tenants;
mod util;
