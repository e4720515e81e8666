//! Memory that a burst used goes back to the system afterwards.
//!
//! glibc's malloc raises its mmap threshold to the size of any mmapped block that is freed,
//! so after the first argon2 hash (19 MiB) every later one comes from a thread's heap arena
//! and stays there: measured on this server, 48 sign-ups with only two hashed at a time took
//! the process from 34 MiB to 584 MiB, and it stayed there. Fixing the threshold makes every
//! block of 1 MiB or more its own mapping, returned on free: the same burst peaks at 78 MiB
//! and settles at 39 MiB (BENCHMARKS.md).

/// Blocks at least this large are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD_BYTES: i32 = 1024 * 1024;

/// Called once at start-up, before the allocations it is about.
pub fn release_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; any value is accepted or refused.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
