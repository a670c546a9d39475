//! Dataset specs: YAML files → raw serde types → validated specs. This is the
//! only module that names the YAML crate (in `yaml.rs`).

pub mod yaml;
