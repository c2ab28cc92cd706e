//! The Rhai engine every function runs in: no I/O, bounded work, bounded memory, bounded time.
//!
//! One engine is built per [`crate::Functions`] and shared by all threads. The per-call
//! wall-clock deadline lives in a thread-local, so concurrent calls never contend on a lock:
//! Rhai evaluates on the calling thread and polls [`Engine::on_progress`], which reads the
//! deadline of the call running on that thread.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine};

use crate::convert::BigU64;

/// Resource limits for user functions. All are per call except `max_source_bytes`.
///
/// The defaults stop a runaway script (endless loop, exponential recursion, a string or
/// collection that doubles forever) within well under a second, yet leave ample room for
/// realistic record transforms of records up to S2's 1 MiB limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Maximum Rhai operations per call; 0 = unlimited. Default 1,000,000.
    pub max_operations: u64,
    /// Maximum function call nesting (recursion) depth. Default 32. Each level uses native
    /// stack of the calling thread, so keep it well below Rhai's release default of 64.
    pub max_call_levels: usize,
    /// Maximum expression nesting depth at the top level, checked at load; 0 = unlimited. Default 64.
    pub max_expr_depth: usize,
    /// Maximum expression nesting depth inside functions, checked at load; 0 = unlimited. Default 32.
    pub max_function_expr_depth: usize,
    /// Maximum bytes of one string, and of all strings inside one array or map; 0 = unlimited.
    /// Default 4 MiB (four times S2's record limit, so oversized records can still be trimmed).
    pub max_string_size: usize,
    /// Maximum elements of one array, nested arrays counted; 0 = unlimited. Default 10,000.
    pub max_array_size: usize,
    /// Maximum entries of one map, nested maps counted; 0 = unlimited. Default 10,000.
    pub max_map_size: usize,
    /// Wall-clock time allowed per call (Sequin uses 1 s). Default 1 s.
    pub deadline: Duration,
    /// Maximum size of one function's source code. Default 64 KiB.
    pub max_source_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 4 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            deadline: Duration::from_secs(1),
            max_source_bytes: 64 << 10,
        }
    }
}

/// The value the progress callback terminates a script with when its deadline has passed.
pub(crate) const DEADLINE_TOKEN: &str = "s2sink-deadline";

/// How many operations pass between two clock reads (reading the clock costs ~20 ns).
const CLOCK_CHECK_EVERY: u64 = 64;

/// How many variable reads pass between two full size checks of every variable in scope.
const FULL_SIZE_CHECK_EVERY: u32 = 256;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static VAR_READS: Cell<u32> = const { Cell::new(0) };
}

/// Sets the deadline of the call running on this thread until dropped.
pub(crate) struct DeadlineGuard {
    previous: Option<Instant>,
}

impl DeadlineGuard {
    pub(crate) fn start(timeout: Duration) -> DeadlineGuard {
        let deadline = Instant::now().checked_add(timeout);
        DeadlineGuard {
            previous: DEADLINE.with(|d| d.replace(deadline)),
        }
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.previous));
    }
}

fn map_too_large() -> Box<rhai::EvalAltResult> {
    Box::new(rhai::EvalAltResult::ErrorDataTooLarge(
        "Size of object map".to_string(),
        rhai::Position::NONE,
    ))
}

fn deadline_passed() -> bool {
    DEADLINE
        .with(|d| d.get())
        .is_some_and(|dl| Instant::now() >= dl)
}

/// Builds the sandboxed engine: Rhai's standard library (pure functions only: no file,
/// network or process access exists in it), `eval` and modules disabled, strict variables,
/// limits from `limits`, `print`/`debug` sent to `tracing` at debug level.
pub(crate) fn build_engine(limits: &SandboxLimits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());

    // No dynamic code and no modules: `eval` would bypass load-time checks, `import` could
    // reach a resolver (none is installed by `new_raw`, this makes it a load-time error).
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.disable_symbol("export");
    // An undefined variable is a load-time error, not a surprise `()` at run time.
    engine.set_strict_variables(true);

    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.on_progress(|ops| {
        if ops % CLOCK_CHECK_EVERY == 0 && deadline_passed() {
            Some(Dynamic::from(DEADLINE_TOKEN))
        } else {
            None
        }
    });

    // Rhai checks a map's size after `map.key = v` but not after `map["key"] = v`, so a loop
    // adding keys by index would grow without bound (until the deadline). Close the gap on
    // variable reads, which every such loop does: a map variable's own length on each read
    // (O(1)), and a full size check of all variables every `FULL_SIZE_CHECK_EVERY` reads.
    #[allow(deprecated)] // `on_var` is stable in practice, only marked volatile.
    engine.on_var(|name, _index, ctx| {
        let engine = ctx.engine();
        let scope = ctx.scope();
        if let Some(value) = scope.get(name) {
            if let Some(map) = value.read_lock::<rhai::Map>() {
                let max = engine.max_map_size();
                if max > 0 && map.len() > max {
                    return Err(map_too_large());
                }
            }
        }
        let reads = VAR_READS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if reads.is_multiple_of(FULL_SIZE_CHECK_EVERY) {
            for (_, _, value) in scope.iter_raw() {
                engine.ensure_data_size_within_limits(value)?;
            }
        }
        Ok(None)
    });

    engine.on_print(|s| tracing::debug!(target: "s2sink_transform::script", "{s}"));
    engine.on_debug(|s, src, pos| {
        tracing::debug!(target: "s2sink_transform::script", source = src, %pos, "{s}")
    });

    BigU64::register(&mut engine);
    engine
}
