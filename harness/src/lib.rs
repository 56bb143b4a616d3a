//! genbench harness: suites and the published tables they cite, power-law fits of sweep logs,
//! plots, and the records, manifests and reports of suite runs.
//!
//! The runner that drives generators fills [`records::RunResult`]s; everything here is pure
//! over those plain structs, so it is tested without any model.
pub mod autonat_search;
pub mod fit;
pub mod fit_command;
pub mod manifest;
pub mod model_registry;
pub mod papers;
pub mod plots;
pub mod profile;
pub mod records;
pub mod quickstart;
pub mod report;
pub mod runner;
pub mod sampling;
pub mod slurm;
pub mod suite;
pub mod suite_shards;
pub mod sweep_log;
