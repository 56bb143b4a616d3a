//! CPU thread count. candle's gemm and conv tiles run on rayon's global pool and read
//! `RAYON_NUM_THREADS`, so both are set together, once, before any tensor work.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sets the number of CPU threads for all tensor work. `None` keeps rayon's default (all cores).
/// Only the first call has an effect: the global pool cannot be resized once started.
pub fn configure(threads: Option<usize>) -> usize {
    *CONFIGURED.get_or_init(|| {
        if let Some(n) = threads.filter(|&n| n > 0) {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
        rayon::current_num_threads()
    })
}

/// The number of threads tensor work uses now.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
