//! One module per subcommand.
pub mod autonat_search;
pub mod bench;
pub mod eval;
pub mod fit;
pub mod info;
pub mod merge;
pub mod model_registry;
pub mod profile;
pub mod quickstart;
pub mod sample;
pub mod suite;
pub mod suite_cluster;
