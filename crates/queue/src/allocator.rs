//! Allocator settings for programs whose global allocator is mimalloc (the `s2-sink` binary).

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the version libmimalloc-sys 0.1.49
/// builds by default); libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the program frees for reuse instead of returning it to the OS a second later
/// (mimalloc's default). sled allocates a fresh log buffer (a segment's size) for each segment
/// it writes and many short-lived node copies; giving those pages back and faulting them in again
/// (the kernel zeroes each one) cost 15–20% of the queue's CPU per message
/// (docs/BENCHMARKS.md, session 7). Peak memory does not grow: the process keeps what it
/// already used at its peak. Call it first thing in `main`, before load arrives.
///
/// An operator who sets `MIMALLOC_PURGE_DELAY` (milliseconds; mimalloc reads it at start)
/// keeps that choice: memory handed back after that delay, for some CPU.
pub fn tune_mimalloc() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one integer option; mimalloc reads options atomically on every purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
