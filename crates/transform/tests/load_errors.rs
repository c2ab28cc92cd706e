//! Load-time errors: reported with file (or `inline <kind>`), line and column.

mod common;

use std::io::Write;

use common::*;
use s2sink_transform::{
    FunctionKind, FunctionSource, Functions, FunctionsConfig, SandboxLimits, TransformError,
    TransformSpec,
};

fn load_err(config: FunctionsConfig) -> (FunctionKind, s2sink_transform::Location, String) {
    match Functions::compile(&config).unwrap_err() {
        TransformError::Load {
            kind,
            location,
            message,
        } => (kind, location, message),
        other => panic!("not a load error: {other:?}"),
    }
}

fn transform_cfg(code: &str) -> FunctionsConfig {
    FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::Inline(code.into()))),
        ..Default::default()
    }
}

#[test]
fn syntax_error_has_line_and_column() {
    let (kind, loc, msg) = load_err(transform_cfg(
        "fn transform(action, record, changes, metadata) {\n  let x = ;\n  record\n}",
    ));
    assert_eq!(kind, FunctionKind::Transform);
    assert_eq!(loc.source, "inline transform");
    assert_eq!(loc.line, Some(2));
    assert_eq!(loc.column, Some(11));
    assert!(msg.starts_with("syntax error"), "{msg}");
}

#[test]
fn undefined_variable_is_caught_at_load() {
    let (_, loc, msg) = load_err(transform_cfg(
        "fn transform(action, record, changes, metadata) {\n  recrod.id\n}",
    ));
    assert_eq!(loc.line, Some(2));
    assert!(msg.contains("recrod"), "{msg}");
}

#[test]
fn missing_function_is_named_with_the_functions_found() {
    let (kind, loc, msg) = load_err(FunctionsConfig {
        filter: inline("// typo below\nfn filtr(action, record, changes, metadata) { true }"),
        ..Default::default()
    });
    assert_eq!(kind, FunctionKind::Filter);
    assert_eq!(loc.source, "inline filter");
    assert_eq!((loc.line, loc.column), (Some(2), Some(1)));
    assert!(
        msg.contains("missing function `fn filter(action, record, changes, metadata)`")
            && msg.contains("fn filtr/4"),
        "{msg}"
    );
    let (_, loc, msg) = load_err(FunctionsConfig {
        route: inline("let x = 1;"),
        ..Default::default()
    });
    assert_eq!(loc.line, None);
    assert!(msg.contains("no functions are defined"), "{msg}");
}

#[test]
fn wrong_arity_points_at_the_function() {
    let (kind, loc, msg) = load_err(FunctionsConfig {
        route: inline(
            "fn helper(x) { x }\n\n  fn route(record) {\n  #{basin: \"b\", stream: \"s\"}\n}",
        ),
        ..Default::default()
    });
    assert_eq!(kind, FunctionKind::Route);
    assert_eq!((loc.line, loc.column), (Some(3), Some(3)));
    assert!(
        msg.contains("wrong number of parameters") && msg.contains("takes 1 (record)"),
        "{msg}"
    );
    let text = Functions::compile(&transform_cfg("fn transform(a, b, c, d, e) { a }"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("inline transform, line 1, column 1") && text.contains("takes 5"),
        "{text}"
    );
}

#[test]
fn file_sources_name_the_path() {
    let dir = std::env::temp_dir().join(format!("s2sink-transform-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.rhai");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "fn transform(action, record, changes, metadata) {{\n  record.id +\n}}"
    )
    .unwrap();
    drop(f);
    let err = Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::File(path.clone()))),
        ..Default::default()
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("line 3"),
        "{text}"
    );

    // A good file loads, and runtime errors name the file too.
    let good = dir.join("good.rhai");
    std::fs::write(
        &good,
        "fn transform(action, record, changes, metadata) {\n  record.id.foo()\n}\n",
    )
    .unwrap();
    let fns = Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::File(good.clone()))),
        ..Default::default()
    })
    .unwrap();
    let err = fns
        .transform(&envelope("insert"), Some("m"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&good.display().to_string()) && err.contains("line 2"),
        "{err}"
    );

    // An unreadable file.
    let missing = dir.join("nope.rhai");
    let (_, loc, msg) = load_err(FunctionsConfig {
        filter: Some(FunctionSource::File(missing.clone())),
        ..Default::default()
    });
    assert_eq!(loc.source, missing.display().to_string());
    assert!(msg.contains("cannot read file"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sandbox_refuses_eval_and_import_at_load() {
    let (_, _, msg) = load_err(transform_cfg(
        r#"fn transform(action, record, changes, metadata) { eval("1") }"#,
    ));
    assert!(msg.contains("eval"), "{msg}");
    let (_, _, msg) = load_err(transform_cfg(
        "import \"std/fs\" as fs;\nfn transform(action, record, changes, metadata) { record }",
    ));
    assert!(msg.contains("import"), "{msg}");
}

#[test]
fn oversized_source_and_deep_expressions_are_refused() {
    let config = FunctionsConfig {
        limits: SandboxLimits {
            max_source_bytes: 100,
            ..Default::default()
        },
        ..transform_cfg(&format!(
            "fn transform(a, r, c, m) {{ {} }}",
            "1 + ".repeat(40) + "1"
        ))
    };
    let (_, _, msg) = load_err(config);
    assert!(msg.contains("max_source_bytes"), "{msg}");
    let deep = format!(
        "fn transform(a, r, c, m) {{ {}1{} }}",
        "(".repeat(200),
        ")".repeat(200)
    );
    let (_, loc, msg) = load_err(transform_cfg(&deep));
    assert!(
        loc.line.is_some() && msg.contains("maximum complexity"),
        "{msg}"
    );
}
