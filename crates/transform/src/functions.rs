//! The configured set of functions and how one message goes through them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use rhai::{Dynamic, Engine};
use s2sink_core::Route;
use serde_json::Value;

use crate::convert::{to_dynamic, to_json};
use crate::error::{FunctionKind, Location, TransformError};
use crate::path::PathTransform;
use crate::route::{friendly_type, validate_route};
use crate::sandbox::{build_engine, SandboxLimits};
use crate::script::{FunctionSource, Script, PARAMS};

/// How the S2 record body is made from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformSpec {
    /// A Sequin path such as `record` or `record.payload`; the body is the value there
    /// (`null` when missing).
    Path(String),
    /// A Rhai `fn transform(action, record, changes, metadata)`; the body is its result.
    Function(FunctionSource),
}

/// Which functions a sink uses. Everything is optional; the default runs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionsConfig {
    /// Makes the record body; `None` sends the message unchanged.
    pub transform: Option<TransformSpec>,
    /// `fn filter(...)` returning a bool; `false` drops the message (acked, not delivered).
    pub filter: Option<FunctionSource>,
    /// `fn route(...)` returning `#{basin, stream}`; `None` uses the sink's static route.
    pub route: Option<FunctionSource>,
    /// Sandbox limits for every function call.
    pub limits: SandboxLimits,
}

/// What to do with one message after its functions ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied<'a> {
    /// The filter returned false: acknowledge without delivering (cursors still advance).
    Filtered,
    /// Deliver `body` (JSON-encode it as the S2 record body) to `route`.
    Deliver {
        /// The record body. Borrowed from the message when no transform ran or a path
        /// transform picked a part of it (no copy); owned when a function made it.
        body: Cow<'a, Value>,
        /// `None` = the sink's static route; `Some` = the route function's choice.
        route: Option<Route>,
    },
}

enum Transform {
    Path(PathTransform),
    Script(Script),
}

struct Inner {
    engine: Engine,
    limits: SandboxLimits,
    transform: Option<Transform>,
    filter: Option<Script>,
    route: Option<Script>,
    /// Which of the four arguments any configured script reads (the rest are passed as `()`).
    needed: [bool; 4],
}

/// Compiled transform, filter and route functions of one sink.
///
/// Compile once at startup ([`Functions::compile`] reports every load error with its
/// location); then call from any number of threads: cloning is an `Arc` bump, the compiled
/// scripts and the sandboxed engine are shared, and each call has its own deadline.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transform = match &self.inner.transform {
            None => "none".to_string(),
            Some(Transform::Path(p)) => format!("path {}", p.as_str()),
            Some(Transform::Script(_)) => "function".to_string(),
        };
        f.debug_struct("Functions")
            .field("transform", &transform)
            .field("filter", &self.inner.filter.is_some())
            .field("route", &self.inner.route.is_some())
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// The four arguments Sequin passes, taken from the message's top-level fields; those no
/// script reads are not converted.
fn args_of(msg: &Value, needed: [bool; 4]) -> [Dynamic; 4] {
    let field = |i: usize| {
        if needed[i] {
            msg.get(PARAMS[i]).map_or(Dynamic::UNIT, to_dynamic)
        } else {
            Dynamic::UNIT
        }
    };
    [field(0), field(1), field(2), field(3)]
}

impl Functions {
    /// Loads and compiles every configured function, checking syntax, signatures and paths.
    ///
    /// An error here means the config is unusable: the server should refuse to start.
    pub fn compile(config: &FunctionsConfig) -> Result<Functions, TransformError> {
        let limits = config.limits.clone();
        let engine = build_engine(&limits);
        let transform = match &config.transform {
            None => None,
            Some(TransformSpec::Path(p)) => Some(Transform::Path(
                PathTransform::parse(p).map_err(|message| TransformError::Load {
                    kind: FunctionKind::Transform,
                    location: Location::whole("path transform"),
                    message,
                })?,
            )),
            Some(TransformSpec::Function(src)) => Some(Transform::Script(Script::load(
                FunctionKind::Transform,
                src,
                &engine,
                &limits,
            )?)),
        };
        let load = |kind, src: &Option<FunctionSource>| {
            src.as_ref()
                .map(|s| Script::load(kind, s, &engine, &limits))
                .transpose()
        };
        let filter = load(FunctionKind::Filter, &config.filter)?;
        let route = load(FunctionKind::Route, &config.route)?;
        let mut needed = [false; 4];
        let scripts = [
            match &transform {
                Some(Transform::Script(s)) => Some(s),
                _ => None,
            },
            filter.as_ref(),
            route.as_ref(),
        ];
        for script in scripts.into_iter().flatten() {
            for (n, u) in needed.iter_mut().zip(script.uses()) {
                *n |= u;
            }
        }
        Ok(Functions {
            inner: Arc::new(Inner {
                engine,
                limits,
                transform,
                filter,
                route,
                needed,
            }),
        })
    }

    /// True when no function is configured, so [`Functions::apply`] only borrows the message.
    pub fn is_noop(&self) -> bool {
        let i = &self.inner;
        i.transform.is_none() && i.filter.is_none() && i.route.is_none()
    }

    /// Runs filter, then route, then transform (Sequin's order) on one message.
    ///
    /// `msg_id` only labels errors. The message's `action`, `record`, `changes` and
    /// `metadata` fields are converted to Rhai once and shared by the calls. With no
    /// functions configured this does no Rhai work and no copy.
    pub fn apply<'a>(
        &self,
        msg: &'a Value,
        msg_id: Option<&str>,
    ) -> Result<Applied<'a>, TransformError> {
        let i = &self.inner;
        let needs_args = i.filter.is_some()
            || i.route.is_some()
            || matches!(i.transform, Some(Transform::Script(_)));
        let args = needs_args.then(|| args_of(msg, i.needed));
        if let (Some(filter), Some(args)) = (&i.filter, &args) {
            if !self.run_filter(filter, args.clone(), msg_id)? {
                return Ok(Applied::Filtered);
            }
        }
        let route = match (&i.route, &args) {
            (Some(route), Some(args)) => Some(self.run_route(route, args.clone(), msg_id)?),
            _ => None,
        };
        let body = self.run_transform(msg, args, msg_id)?;
        Ok(Applied::Deliver { body, route })
    }

    /// Runs only the filter: `Ok(true)` = deliver (also when no filter is configured).
    pub fn filter(&self, msg: &Value, msg_id: Option<&str>) -> Result<bool, TransformError> {
        match &self.inner.filter {
            Some(f) => self.run_filter(f, args_of(msg, self.inner.needed), msg_id),
            None => Ok(true),
        }
    }

    /// Runs only the route function: `Ok(None)` when none is configured (use the sink's route).
    pub fn route(
        &self,
        msg: &Value,
        msg_id: Option<&str>,
    ) -> Result<Option<Route>, TransformError> {
        match &self.inner.route {
            Some(r) => self
                .run_route(r, args_of(msg, self.inner.needed), msg_id)
                .map(Some),
            None => Ok(None),
        }
    }

    /// Runs only the transform: the record body (the message itself when none is configured).
    pub fn transform<'a>(
        &self,
        msg: &'a Value,
        msg_id: Option<&str>,
    ) -> Result<Cow<'a, Value>, TransformError> {
        self.run_transform(msg, None, msg_id)
    }

    fn run_filter(
        &self,
        script: &Script,
        args: [Dynamic; 4],
        msg_id: Option<&str>,
    ) -> Result<bool, TransformError> {
        let out = script.call(&self.inner.engine, &self.inner.limits, args, msg_id)?;
        out.as_bool().map_err(|_| TransformError::InvalidOutput {
            kind: FunctionKind::Filter,
            msg_id: msg_id.map(str::to_string),
            reason: format!("filter must return a bool, got {}", friendly_type(&out)),
        })
    }

    fn run_route(
        &self,
        script: &Script,
        args: [Dynamic; 4],
        msg_id: Option<&str>,
    ) -> Result<Route, TransformError> {
        let out = script.call(&self.inner.engine, &self.inner.limits, args, msg_id)?;
        validate_route(&out).map_err(|violations| TransformError::InvalidRoute {
            msg_id: msg_id.map(str::to_string),
            violations,
        })
    }

    fn run_transform<'a>(
        &self,
        msg: &'a Value,
        args: Option<[Dynamic; 4]>,
        msg_id: Option<&str>,
    ) -> Result<Cow<'a, Value>, TransformError> {
        match &self.inner.transform {
            None => Ok(Cow::Borrowed(msg)),
            Some(Transform::Path(p)) => {
                Ok(p.apply(msg).map_or(Cow::Owned(Value::Null), Cow::Borrowed))
            }
            Some(Transform::Script(script)) => {
                let args = args.unwrap_or_else(|| args_of(msg, self.inner.needed));
                let out = script.call(&self.inner.engine, &self.inner.limits, args, msg_id)?;
                let hint = order_hint(&out, msg);
                to_json(&out, hint).map(Cow::Owned).map_err(|reason| {
                    TransformError::InvalidOutput {
                        kind: FunctionKind::Transform,
                        msg_id: msg_id.map(str::to_string),
                        reason,
                    }
                })
            }
        }
    }
}

/// The input value a transform result most likely came from, so the result keeps that value's
/// key order (see [`crate::convert`]): for a map the candidate sharing the most top-level keys,
/// for an array the first array candidate, preferring one of the same length.
fn order_hint<'a>(out: &Dynamic, msg: &'a Value) -> Option<&'a Value> {
    let candidates = [
        msg.get("record"),
        Some(msg),
        msg.get("changes"),
        msg.get("metadata"),
    ];
    let candidates = candidates.into_iter().flatten();
    if let Some(arr) = out.read_lock::<rhai::Array>() {
        let arrays: Vec<&Value> = candidates.filter(|c| c.is_array()).collect();
        return arrays
            .iter()
            .find(|c| c.as_array().is_some_and(|a| a.len() == arr.len()))
            .or(arrays.first())
            .copied();
    }
    let map = out.read_lock::<rhai::Map>()?;
    let mut best: Option<(&Value, usize)> = None;
    for cand in candidates {
        let Some(obj) = cand.as_object() else {
            continue;
        };
        // Look the candidate's keys up in the (sorted) result map: cheaper than hashing.
        let shared = obj.keys().filter(|k| map.contains_key(k.as_str())).count();
        // Most transforms return the record with a few changes: stop at a clear majority.
        if shared * 2 > map.len() {
            return Some(cand);
        }
        if shared > 0 && best.is_none_or(|(_, n)| shared > n) {
            best = Some((cand, shared));
        }
    }
    best.map(|(v, _)| v)
}
