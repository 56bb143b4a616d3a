//! Process-wide allocator settings for large, short-lived tensors.
//!
//! glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap`
//! and returns it to the kernel on `free`. Generators allocate and free tensors of that size
//! at every layer (a batch-8 AutoNAT-L activation is 13-50 MB, a VQ decoder's 64-268 MB), so
//! each one is faulted in and zeroed page by page again: measured 9% of an AutoNAT-L batch-8
//! step and 30% of its decode on 2 cores (`perf`: `clear_page_erms`, page faults).
//! [`keep_freed_memory`] serves them from the heap instead and keeps freed memory for reuse;
//! the peak resident size is unchanged (same tensors alive at once), it is just not handed back.

/// Makes glibc keep freed memory for reuse (no `mmap` per large block, no trimming below
/// 2 GiB of free heap). Call once at start-up, before the first large allocation. Covers the
/// main thread's allocations (where candle allocates op outputs) and blocks up to 64 MB on
/// other threads (glibc's per-thread heaps are no larger). No effect (and no error) with
/// other C libraries or on other systems.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before worker threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn large_blocks_come_from_the_heap() {
        super::keep_freed_memory();
        // glibc's default serves a 16 MB block with its own mmap (counted in `hblkhd`). (16 MB:
        // a test runs on a spawned thread, whose arena heaps hold at most 64 MB; larger blocks
        // are mmapped there whatever the setting. The binary allocates on its main thread.)
        // SAFETY: mallinfo2 only reads allocator statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let block = std::hint::black_box(vec![1u8; 16 << 20]);
        let during = mapped();
        assert!(during < before + (16 << 20), "a 16 MB block was mmapped: {before} -> {during} bytes");
        assert_eq!(block[12345], 1);
    }
}
