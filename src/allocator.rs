//! The allocator, and memory that a burst used going back to the system afterwards.
//!
//! The server allocates with mimalloc (set in `main.rs`): against glibc's malloc it cut the
//! server's CPU per relayed token by about a fifth and raised throughput by a quarter
//! (BENCHMARKS.md). Two settings keep what #8 measured about bursts:
//!
//! - mimalloc keeps freed memory for reuse and returns it to the system later, lazily; the
//!   19 MiB blocks of argon2 hashes are handed back at once instead
//!   ([`return_freed_memory`] after each hash): 200 parallel sign-ups settle at the same
//!   ~31 MiB as before, where mimalloc left alone kept ~133 MiB.
//! - glibc's malloc still serves the C code (SQLite). It raises its mmap threshold to the
//!   size of any mmapped block that is freed, so later large blocks would stay in a heap
//!   arena; fixing the threshold makes every block of 1 MiB or more its own mapping,
//!   returned on free.

/// Blocks at least this large are mapped on their own and unmapped when freed (glibc).
const MMAP_THRESHOLD_BYTES: i32 = 1024 * 1024;

/// Hands memory that was freed back to the system now, not later: for the thread that
/// just freed something large (an argon2 hash's blocks). Costs well under a millisecond,
/// beside the tens of milliseconds of the hash.
pub fn return_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own free lists (`true`: all it can free).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Called once at start-up, before the allocations it is about.
pub fn release_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; any value is accepted or refused.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
