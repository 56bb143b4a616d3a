//! Generator families: one file per family, each implementing [`crate::generator::Generator`].
pub mod mar;
pub mod mar_diffusion;
pub mod llamagen;
pub mod taming;
pub mod autonat_strategy;
pub mod autonat;
pub mod var;
