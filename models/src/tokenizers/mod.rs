//! Image tokenizers / VAEs: one file per published tokenizer, built from the shared blocks in
//! [`crate::nn::conv_ae`] and [`crate::nn::vq`].
pub mod kl16;
pub mod llamagen_vq;
pub mod mage_vqgan;
pub mod taming_vqgan;
pub mod var_vqvae;
pub mod vq_autoencoder;
