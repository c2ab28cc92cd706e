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
    set_purge_delay(-1);
}

/// Returns memory the program frees to the OS once it has stayed unused for `delay_ms`
/// milliseconds, for programs that would rather stay small than save the CPU of faulting
/// pages in again (see [`tune_mimalloc`]). Applies to memory freed from now on. Returns
/// `false`, changing nothing, when the operator set `MIMALLOC_PURGE_DELAY`: theirs wins.
pub fn return_freed_memory_after(delay_ms: u32) -> bool {
    set_purge_delay(i64::from(delay_ms))
}

fn set_purge_delay(delay_ms: i64) -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    let value = std::os::raw::c_long::try_from(delay_ms).unwrap_or(std::os::raw::c_long::MAX);
    // SAFETY: sets one integer option; mimalloc reads options atomically on every purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, value) };
    true
}

/// The purge delay in effect (milliseconds; negative: freed memory is never returned).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads one integer option.
    let value: std::os::raw::c_long =
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    value as i64
}

/// Stops the kernel from backing this process's memory with transparent huge pages, on Linux
/// (elsewhere it does nothing and returns `Ok(false)`). mimalloc asks for them, and a 2 MiB
/// page stays resident whole while any byte of it is in use, which kept 40–75 MB more of a
/// 1M-message restart resident (docs/BENCHMARKS.md); without them page faults and TLB misses
/// cost some CPU. The setting is the process's own (`PR_SET_THP_DISABLE`): it covers memory
/// mapped before the call too, for every page faulted in after it, and child processes inherit
/// it. Returns `Ok(false)`, changing nothing, when the operator set `MIMALLOC_ALLOW_THP`.
pub fn disable_huge_pages() -> std::io::Result<bool> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(false);
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(false)
}

/// Whether transparent huge pages are off for this process (see [`disable_huge_pages`]);
/// always `false` off Linux.
pub fn huge_pages_disabled() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: both change this process's settings, and the assertions read them back.
    #[test]
    fn lean_settings_take_effect_and_the_fast_default_is_restored_by_tune() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!(return_freed_memory_after(250));
            assert_eq!(purge_delay_ms(), 250);
            tune_mimalloc();
            assert_eq!(purge_delay_ms(), -1);
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() && cfg!(target_os = "linux") {
            assert!(disable_huge_pages().expect("prctl"));
            assert!(huge_pages_disabled());
        }
    }
}
