//! Generator families: one file per family, each implementing [`crate::generator::Generator`].
pub mod autonat;
pub mod autonat_strategy;
pub mod llamagen;
pub mod mar;
pub mod mar_diffusion;
pub mod taming;
pub mod var;
