//! Heap habits of a long-running node agent (glibc only; a no-op elsewhere).
//!
//! Start-up is the agent's memory peak: the kernel BTF (about 5 MiB here)
//! is read and parsed three times (by aya's loader, for the tp_btf/LSM
//! attach, and for the struct offsets), then freed. glibc keeps freed heap
//! memory by default, and its mmap threshold grows with every large free,
//! so that peak stayed in the agent's RSS for good (measured: 37 MiB at
//! rest, of which 18 MiB was freed heap; docs/benchmarks.md).
//!
//! [`tune`] fixes the thresholds before the first allocation that matters
//! (large blocks come from mmap and go back on free; the heap top is
//! returned beyond 128 KiB of slack) and caps the arenas at two (one per
//! runtime worker); [`trim`] gives back what start-up and each inventory
//! resync freed.

/// Called once, first thing in `main`.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before
    // any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap memory to the kernel (after start-up and resyncs).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
