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

/// A raw `f32` pointer that rayon tasks may share: for kernels whose tasks each write their own
/// disjoint region of one output buffer. The pointer is private, so closures reach it through
/// [`SendPtr::add`] and capture the whole `Sync` wrapper (a closure naming the field would
/// capture the bare `*mut` alone, which is not `Sync`).
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(*mut f32);

// SAFETY: the wrapper only carries the address between threads; each kernel that dereferences it
// writes regions no other task touches at the same time (every call site says which).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub fn new(ptr: *mut f32) -> Self {
        Self(ptr)
    }

    /// The pointer `count` floats further.
    ///
    /// # Safety
    /// As `pointer::add`: the result must stay inside the buffer the pointer came from.
    #[inline(always)]
    pub unsafe fn add(self, count: usize) -> *mut f32 {
        unsafe { self.0.add(count) }
    }
}
