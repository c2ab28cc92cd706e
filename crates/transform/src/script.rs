//! One compiled user function: loading with load-time checks, and a sandboxed call.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Position, Scope, AST};

use crate::error::{FunctionKind, Limit, Location, TransformError};
use crate::sandbox::{DeadlineGuard, SandboxLimits, DEADLINE_TOKEN};

/// Where a function's Rhai source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionSource {
    /// A `.rhai` file, read once at load; errors name this path.
    File(PathBuf),
    /// Source text given inline in the config; errors name it `inline <kind>`.
    Inline(String),
}

/// The parameters every function takes, in Sequin's order.
pub const PARAMS: [&str; 4] = ["action", "record", "changes", "metadata"];

/// A compiled script whose `fn <kind>(action, record, changes, metadata)` was checked at load.
#[derive(Debug)]
pub(crate) struct Script {
    kind: FunctionKind,
    source_name: Arc<str>,
    ast: AST,
    uses: [bool; 4],
}

impl Script {
    /// Reads (for files), size-checks, compiles and checks the signature of one function.
    pub(crate) fn load(
        kind: FunctionKind,
        source: &FunctionSource,
        engine: &Engine,
        limits: &SandboxLimits,
    ) -> Result<Script, TransformError> {
        let (name, code) = match source {
            FunctionSource::File(path) => {
                let name = path.display().to_string();
                let code = std::fs::read_to_string(path).map_err(|e| TransformError::Load {
                    kind,
                    location: Location::whole(&name),
                    message: format!("cannot read file: {e}"),
                })?;
                (name, code)
            }
            FunctionSource::Inline(code) => (format!("inline {kind}"), code.clone()),
        };
        let load_err = |location: Location, message: String| TransformError::Load {
            kind,
            location,
            message,
        };
        if code.len() > limits.max_source_bytes {
            return Err(load_err(
                Location::whole(&name),
                format!(
                    "source is {} bytes, the limit (max_source_bytes) is {}",
                    code.len(),
                    limits.max_source_bytes
                ),
            ));
        }
        let mut ast = engine
            .compile(&code)
            .map_err(|e| load_err(Location::at(&name, e.1), format!("syntax error: {}", e.0)))?;
        ast.set_source(name.as_str());
        check_signature(kind, &ast, &code).map_err(|(pos, msg)| {
            let location = match pos {
                Some((line, column)) => Location {
                    source: name.clone(),
                    line: Some(line),
                    column: Some(column),
                },
                None => Location::whole(&name),
            };
            load_err(location, msg)
        })?;
        let uses = params_used(kind, engine, &code);
        Ok(Script {
            kind,
            source_name: name.into(),
            ast,
            uses,
        })
    }

    /// Which of the four parameters the function reads; the caller skips converting the
    /// others (passing `()`), which halves the cost of a typical route or filter.
    pub(crate) fn uses(&self) -> [bool; 4] {
        self.uses
    }

    /// Calls the function with the four arguments under the per-call deadline.
    ///
    /// Only the function runs; top-level statements of the script are never evaluated.
    pub(crate) fn call(
        &self,
        engine: &Engine,
        limits: &SandboxLimits,
        args: [Dynamic; 4],
        msg_id: Option<&str>,
    ) -> Result<Dynamic, TransformError> {
        let _deadline = DeadlineGuard::start(limits.deadline);
        let [action, record, changes, metadata] = args;
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        engine
            .call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &self.ast,
                self.kind.fn_name(),
                (action, record, changes, metadata),
            )
            .map_err(|e| self.eval_error(e, msg_id))
    }

    /// Maps a Rhai runtime error to a [`TransformError`], innermost cause and position first.
    fn eval_error(&self, err: Box<EvalAltResult>, msg_id: Option<&str>) -> TransformError {
        let mut err = err;
        let mut pos = Position::NONE;
        while let EvalAltResult::ErrorInFunctionCall(_, _, inner, p) = *err {
            if !p.is_none() {
                pos = p;
            }
            err = inner;
        }
        let inner_pos = err.take_position();
        if !inner_pos.is_none() {
            pos = inner_pos;
        }
        let location = Location::at(&self.source_name, pos);
        let msg_id = msg_id.map(str::to_string);
        let limit = match &*err {
            EvalAltResult::ErrorTerminated(token, _)
                if token.clone().into_string().ok().as_deref() == Some(DEADLINE_TOKEN) =>
            {
                Some(Limit::Deadline)
            }
            EvalAltResult::ErrorTooManyOperations(_) => Some(Limit::Operations),
            EvalAltResult::ErrorStackOverflow(_) => Some(Limit::CallDepth),
            EvalAltResult::ErrorDataTooLarge(what, _) if what.starts_with("Length of string") => {
                Some(Limit::StringSize)
            }
            EvalAltResult::ErrorDataTooLarge(what, _) if what.starts_with("Size of array") => {
                Some(Limit::ArraySize)
            }
            EvalAltResult::ErrorDataTooLarge(what, _) if what.starts_with("Size of object map") => {
                Some(Limit::MapSize)
            }
            _ => None,
        };
        match limit {
            Some(limit) => TransformError::Limit {
                kind: self.kind,
                msg_id,
                location,
                limit,
            },
            None => TransformError::Runtime {
                kind: self.kind,
                msg_id,
                location,
                message: err.to_string(),
            },
        }
    }
}

/// Checks that `fn <kind>` exists with exactly the four parameters; on failure returns the
/// best position to point at (the function with that name, or the first function defined).
fn check_signature(
    kind: FunctionKind,
    ast: &AST,
    code: &str,
) -> Result<(), (Option<(usize, usize)>, String)> {
    let name = kind.fn_name();
    let expected = format!("fn {name}({})", PARAMS.join(", "));
    let same_name: Vec<_> = ast.iter_functions().filter(|f| f.name == name).collect();
    if same_name.iter().any(|f| f.params.len() == PARAMS.len()) {
        return Ok(());
    }
    if let Some(f) = same_name.first() {
        return Err((
            find_fn(code, name),
            format!(
                "wrong number of parameters: `fn {name}` takes {} ({}), it must be `{expected}`",
                f.params.len(),
                f.params.join(", ")
            ),
        ));
    }
    let defined: Vec<String> = ast
        .iter_functions()
        .map(|f| format!("fn {}/{}", f.name, f.params.len()))
        .collect();
    let first = ast
        .iter_functions()
        .next()
        .and_then(|f| find_fn(code, f.name));
    let found = if defined.is_empty() {
        "no functions are defined".to_string()
    } else {
        format!("defined: {}", defined.join(", "))
    };
    Err((first, format!("missing function `{expected}` ({found})")))
}

/// For each parameter of `fn <kind>`, whether the body refers to it. Found by renaming the
/// parameter in the source and recompiling: with strict variables any use of the old name
/// then fails to compile. When in doubt (signature not found, odd syntax) it says "used".
fn params_used(kind: FunctionKind, engine: &Engine, code: &str) -> [bool; 4] {
    let all = [true; 4];
    let Some(params) = param_spans(code, kind.fn_name()) else {
        return all;
    };
    if params.len() != 4 {
        return all;
    }
    let mut used = all;
    for (i, (start, end)) in params.iter().enumerate() {
        let renamed = format!("{}__s2sink_unused_{i}{}", &code[..*start], &code[*end..]);
        used[i] = engine.compile(&renamed).is_err();
    }
    used
}

/// Byte spans of the parameter names of `fn <name>(...)`, if they are plain identifiers.
fn param_spans(code: &str, name: &str) -> Option<Vec<(usize, usize)>> {
    let (line, column) = find_fn(code, name)?;
    let line_start: usize = code
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let line_text = &code[line_start..];
    let col_byte = line_text.char_indices().nth(column - 1)?.0;
    let sig = line_start + col_byte;
    let open = sig + code[sig..].find('(')? + 1;
    let close = open + code[open..].find(')')?;
    let mut spans = Vec::new();
    let mut at = open;
    for part in code[open..close].split(',') {
        let lead = part.len() - part.trim_start().len();
        let ident = part.trim();
        if ident.is_empty() || !ident.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        spans.push((at + lead, at + lead + ident.len()));
        at += part.len() + 1;
    }
    Some(spans)
}

/// 1-based (line, column) of `fn <name>` in `code`, skipping `//` comments. Good enough to
/// point a human at the definition; Rhai keeps no public position for script functions.
fn find_fn(code: &str, name: &str) -> Option<(usize, usize)> {
    for (i, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut from = 0;
        while let Some(off) = line[from..].find("fn") {
            let at = from + off;
            from = at + 2;
            let before_ok = line[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let rest = &line[at + 2..];
            let trimmed = rest.trim_start();
            if before_ok
                && trimmed.len() < rest.len()
                && trimmed.starts_with(name)
                && trimmed[name.len()..].trim_start().starts_with('(')
            {
                return Some((i + 1, line[..at].chars().count() + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_function_positions() {
        let code = "// fn transform(a)\nfn helper(x) { x }\n\n  private fn transform (a, b) {}\n";
        assert_eq!(find_fn(code, "transform"), Some((4, 11)));
        assert_eq!(find_fn(code, "helper"), Some((2, 1)));
        assert_eq!(find_fn(code, "route"), None);
        assert_eq!(find_fn("fn transformer(a) {}", "transform"), None);
    }

    #[test]
    fn detects_unused_parameters() {
        let engine = crate::sandbox::build_engine(&SandboxLimits::default());
        let uses = |code: &str| params_used(FunctionKind::Route, &engine, code);
        assert_eq!(
            uses("fn route(action, record, changes, metadata) {\n #{basin: \"b\", stream: metadata.t} }"),
            [false, false, false, true]
        );
        assert_eq!(
            uses("fn route( a,r , c,m) { let f = |x| r.id; #{basin: a, stream: c ?? m} }"),
            [true, true, true, true]
        );
        assert_eq!(
            uses("fn route(a, r, c, m) { let r = 1; r }"),
            [false, false, false, false]
        );
        // Unparseable signature: assume everything is used.
        assert_eq!(uses("fn route(a, r, c, m /* x */) { 1 }"), [true; 4]);
    }
}
