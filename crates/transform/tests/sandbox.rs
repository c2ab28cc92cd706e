//! Every sandbox limit stops a runaway script with its own error, quickly; calls from many
//! threads run concurrently with independent deadlines.

mod common;

use std::time::{Duration, Instant};

use common::*;
use s2sink_transform::{
    FunctionSource, Functions, FunctionsConfig, Limit, SandboxLimits, TransformError, TransformSpec,
};

fn compile(code: &str, limits: SandboxLimits) -> Functions {
    Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::Inline(code.into()))),
        limits,
        ..Default::default()
    })
    .unwrap()
}

/// Runs `code` as a transform and returns the limit it hit, checking it ends well within 2 s.
fn hits(code: &str, limits: SandboxLimits) -> (Limit, String) {
    let f = compile(code, limits);
    let msg = envelope("insert");
    let started = Instant::now();
    let err = f.transform(&msg, Some("runaway")).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    let text = err.to_string();
    assert!(
        text.contains("runaway") && text.contains("inline transform"),
        "{text}"
    );
    match err {
        TransformError::Limit { limit, .. } => (limit, text),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn infinite_loop_hits_the_operation_limit() {
    let (limit, text) = hits(
        "fn transform(a, r, c, m) { loop { } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::Operations);
    assert!(text.contains("max_operations"), "{text}");
    let (limit, _) = hits(
        "fn transform(a, r, c, m) { let i = 0; while true { i += 1; } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::Operations);
}

#[test]
fn unbounded_recursion_hits_the_call_depth_limit() {
    let (limit, text) = hits(
        "fn f(n) { f(n + 1) + f(n + 1) }\nfn transform(a, r, c, m) { f(0) }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::CallDepth);
    assert!(text.contains("max_call_levels"), "{text}");
}

#[test]
fn exponential_recursion_within_depth_is_stopped() {
    // Depth stays under 32 but the call tree has ~2^30 nodes.
    let (limit, _) = hits(
        "fn f(n) { if n == 0 { 0 } else { f(n - 1) + f(n - 1) } }\nfn transform(a, r, c, m) { f(30) }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::Operations);
}

#[test]
fn string_growth_hits_the_string_limit() {
    let (limit, text) = hits(
        r#"fn transform(a, r, c, m) { let s = "x"; loop { s += s; } }"#,
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::StringSize);
    assert!(text.contains("max_string_size"), "{text}");
    // One giant allocation is refused before it is made.
    let (limit, _) = hits(
        r#"fn transform(a, r, c, m) { "".pad(1000000000000, "x") }"#,
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::StringSize);
}

#[test]
fn array_growth_hits_the_array_limit() {
    let (limit, text) = hits(
        "fn transform(a, r, c, m) { let x = []; loop { x.push(1); } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::ArraySize);
    assert!(text.contains("max_array_size"), "{text}");
    let (limit, _) = hits(
        "fn transform(a, r, c, m) { let x = [1]; loop { x += x; } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::ArraySize);
    let (limit, _) = hits(
        "fn transform(a, r, c, m) { [].pad(1000000000000, 0) }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::ArraySize);
}

#[test]
fn map_growth_hits_the_map_limit() {
    let (limit, text) = hits(
        "fn transform(a, r, c, m) { let x = #{}; let i = 0; loop { x[`k${i}`] = i; i += 1; } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::MapSize);
    assert!(text.contains("max_map_size"), "{text}");
    // Growth through a nested map or a helper function is caught as well.
    let (limit, _) = hits(
        "fn transform(a, r, c, m) { let x = #{inner: #{}}; let i = 0; loop { x.inner[`k${i}`] = i; i += 1; } }",
        SandboxLimits::default(),
    );
    assert_eq!(limit, Limit::MapSize);
    let (limit, _) = hits(
        "fn g(x, i) { x[`k${i}`] = i; x }\nfn transform(a, r, c, m) { let x = #{}; let i = 0; loop { x = g(x, i); i += 1; } }",
        SandboxLimits {
            max_map_size: 1000,
            ..Default::default()
        },
    );
    assert_eq!(limit, Limit::MapSize);
}

#[test]
fn map_of_big_strings_hits_the_string_limit() {
    // Rhai alone would let `map[key] = new_string` grow memory without bound.
    let limits = SandboxLimits {
        max_string_size: 100_000,
        ..Default::default()
    };
    let (limit, _) = hits(
        r#"fn transform(a, r, c, m) { let s = ""; s.pad(50000, "x"); let x = #{}; let i = 0; loop { x[`k${i}`] = s + i; i += 1; } }"#,
        limits,
    );
    assert_eq!(limit, Limit::StringSize);
}

#[test]
fn deadline_stops_a_script_with_no_operation_limit() {
    let limits = SandboxLimits {
        max_operations: 0,
        deadline: Duration::from_millis(100),
        ..Default::default()
    };
    let started = Instant::now();
    let (limit, text) = hits("fn transform(a, r, c, m) { loop { } }", limits);
    assert_eq!(limit, Limit::Deadline);
    assert!(text.contains("deadline"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn limits_are_configurable() {
    let tight = SandboxLimits {
        max_operations: 50,
        ..Default::default()
    };
    let code = "fn transform(a, r, c, m) { let s = 0; for i in 0..100 { s += i; } s }";
    assert_eq!(hits(code, tight).0, Limit::Operations);
    let ok = compile(code, SandboxLimits::default());
    assert_eq!(
        *ok.transform(&envelope("insert"), None).unwrap(),
        serde_json::json!(4950)
    );
    let small = SandboxLimits {
        max_string_size: 10,
        ..Default::default()
    };
    let (limit, _) = hits(r#"fn transform(a, r, c, m) { "0123456789" + "x" }"#, small);
    assert_eq!(limit, Limit::StringSize);
}

#[test]
fn a_limit_error_leaves_the_functions_usable() {
    let f = compile(
        "fn transform(a, r, c, m) { if a == \"delete\" { loop {} } r.id }",
        SandboxLimits::default(),
    );
    assert!(f.transform(&envelope("delete"), None).is_err());
    assert_eq!(
        *f.transform(&envelope("insert"), None).unwrap(),
        serde_json::json!(1234)
    );
}

#[test]
fn concurrent_calls_from_several_threads() {
    let limits = SandboxLimits {
        max_operations: 0,
        deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let f = Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::Inline(
            r#"fn transform(action, record, changes, metadata) {
                if record.id == 0 { loop {} }
                #{id: record.id, action: action}
            }"#
            .into(),
        ))),
        filter: inline("fn filter(a, r, c, m) { r.id % 7 != 0 }"),
        route: inline(
            r#"fn route(a, r, c, m) { #{basin: "other-basin", stream: `s-${r.id % 3}`} }"#,
        ),
        limits,
    })
    .unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        // One thread runs into its deadline while the others keep working.
        let slow = s.spawn(|| {
            let mut msg = envelope("insert");
            msg["record"]["id"] = 1.into();
            msg["record"]["id"] = 0.into();
            f.transform(&msg, Some("slow")).unwrap_err()
        });
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                s.spawn(move || {
                    for i in 1..=500i64 {
                        let id = t * 1000 + i;
                        let mut msg = envelope("update");
                        msg["record"]["id"] = id.into();
                        match f.apply(&msg, None).unwrap() {
                            s2sink_transform::Applied::Filtered => assert_eq!(id % 7, 0),
                            s2sink_transform::Applied::Deliver { body, route } => {
                                assert_ne!(id % 7, 0);
                                assert_eq!(
                                    *body,
                                    serde_json::json!({"id": id, "action": "update"})
                                );
                                assert_eq!(route.unwrap().stream, format!("s-{}", id % 3));
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let err = slow.join().unwrap();
        assert_eq!(err.limit(), Some(Limit::Deadline), "{err}");
    });
    assert!(started.elapsed() < Duration::from_secs(5));
}
