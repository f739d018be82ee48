//! CEL on a maintained engine: the `cel` crate (0.13, through `kube-cel`,
//! which adds the Kubernetes CEL libraries: strings, lists, sets, regex,
//! quantity, semver, urls, format, math) plus Kyverno's image library.
//!
//! - Optional syntax (`a.?b`, `a[?k]`, `optional.of/none`, `.orValue()`,
//!   `.hasValue()`, `.value()`, `.or()`) is parsed by the crate's own parser
//!   with `enable_optional_syntax(true)` and evaluated by its interpreter
//!   (`Program::compile` leaves that switch off, which is why a plain
//!   compile rejects `.?`). The parser turns `a.?b` into a call `_?._(a, 'b')`
//!   and `a[?k]` into `_[?_](a, k)`; the interpreter's own handling of those
//!   two is wrong for an absent field in cel 0.13 (an error on a plain
//!   operand, a nested optional on an optional one), so they are renamed to
//!   functions of this module ([`OPT_SELECT`], [`OPT_INDEX`]) with CEL's
//!   semantics: absent gives `optional.none()`, present (null included)
//!   gives `optional.of(value)`, none propagates along a chain. The result is
//!   cel's own `optional_type`, so its `orValue`/`hasValue`/`value`/`or`
//!   apply. Plain selection or indexing *through* an optional (`a.?b.c`) is
//!   refused at compile time rather than guessed.
//! - Expressions are parsed once ([`CelProgram::compile`]) and evaluated many
//!   times against a per-thread base context that holds the functions (a
//!   `cel::Context` is not `Sync`, the parsed expression is).
//! - What a node cannot know is refused at compile time, by name
//!   ([`CelError::Unenforceable`]): `request.userInfo`, `authorizer`,
//!   `oldObject`, `namespaceObject`, and Kyverno's lookups (`resource`,
//!   `http`, `globalContext`, `imagedata`, `generator`...).
use std::collections::HashMap;
use std::sync::Arc;

use kube_cel::cel::common::ast::{EntryExpr, Expr};
use kube_cel::cel::extractors::This;
use kube_cel::cel::objects::{Key, Map, Opaque, OptionalValue};
use kube_cel::cel::parser::Parser;
use kube_cel::cel::{Context, ExecutionError, FunctionContext, IdedExpr, Value};
use kube_cel::KubeCelExt;

/// Why an expression cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CelError {
    #[error("CEL syntax error: {0}")]
    Syntax(String),
    /// Valid CEL that this engine does not evaluate faithfully.
    #[error("unsupported CEL: {0}")]
    Unsupported(String),
    /// The expression needs something a node cannot know.
    #[error("needs {0}, which a node cannot know")]
    Unenforceable(String),
}

/// Identifiers an expression may not use because their value is not known on
/// a node (admission-time or cluster lookups), with what to call them.
const UNKNOWABLE_VARIABLES: &[(&str, &str)] = &[
    ("authorizer", "authorizer (API authorization checks)"),
    ("oldObject", "oldObject (the object before an UPDATE)"),
    ("namespaceObject", "namespaceObject (the Namespace object)"),
    ("resource", "resource.* (Kyverno API lookups)"),
    ("http", "http.* (Kyverno HTTP calls)"),
    ("globalContext", "globalContext (Kyverno global context)"),
    ("imagedata", "imagedata (registry lookups)"),
    ("image_data", "image_data (registry lookups)"),
    ("generator", "generator (Kyverno generate)"),
    ("exceptions", "exceptions (Kyverno policy exceptions)"),
];

/// One parsed CEL expression.
#[derive(Debug, Clone)]
pub struct CelProgram {
    source: String,
    expr: IdedExpr,
}

impl CelProgram {
    /// Parses `source` (optional syntax enabled) and refuses expressions
    /// that need what a node cannot know.
    pub fn compile(source: &str) -> Result<CelProgram, CelError> {
        if source.len() > MAX_SOURCE {
            return Err(CelError::Syntax(format!(
                "expression longer than {MAX_SOURCE} bytes"
            )));
        }
        if bracket_depth(source) > MAX_DEPTH {
            return Err(CelError::Syntax(format!(
                "expression nested deeper than {MAX_DEPTH} levels"
            )));
        }
        // The parser (ANTLR) and the AST walk recurse once per level of the
        // tree: parse on a thread with a stack large enough for any input
        // of MAX_SOURCE bytes, and refuse trees deeper than MAX_DEPTH so that
        // evaluation (also recursive) stays shallow on the caller's stack.
        let owned = source.to_string();
        let expr = std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(PARSE_STACK)
            .spawn(move || -> Result<IdedExpr, CelError> {
                let mut expr = Parser::default()
                    .enable_optional_syntax(true)
                    .parse(&owned)
                    .map_err(|e| CelError::Syntax(e.to_string().trim().to_string()))?;
                if ast_depth(&expr) > MAX_DEPTH {
                    return Err(CelError::Syntax(format!(
                        "expression nested deeper than {MAX_DEPTH} levels"
                    )));
                }
                rewrite_optionals(&mut expr)?;
                Ok(expr)
            })
            .map_err(|e| CelError::Syntax(format!("cannot start the CEL parser: {e}")))?
            .join()
            .map_err(|_| CelError::Syntax("the CEL parser failed".into()))??;
        let refs = expr.references();
        for (var, what) in UNKNOWABLE_VARIABLES {
            if refs.has_variable(var) {
                return Err(CelError::Unenforceable(what.to_string()));
            }
        }
        if refs.has_variable("request") && mentions_field(source, "userInfo") {
            return Err(CelError::Unenforceable(
                "request.userInfo (who made the request)".into(),
            ));
        }
        Ok(CelProgram {
            source: source.to_string(),
            expr,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates in `ctx`.
    pub fn eval(&self, ctx: &Context<'_>) -> Result<Value, String> {
        Value::resolve(&self.expr, ctx).map_err(|e| e.to_string())
    }

    /// Evaluates to a boolean (anything else is an error).
    pub fn eval_bool(&self, ctx: &Context<'_>) -> Result<bool, String> {
        match self.eval(ctx)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("expected a bool, got {}", other.type_of())),
        }
    }
}

/// Longest expression accepted.
const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting accepted (brackets before parsing, tree depth after;
/// cel-go's parser default is 250, Kubernetes' expressions stay far below).
const MAX_DEPTH: usize = 100;
/// Stack of the parsing thread (reserved, committed only as used).
const PARSE_STACK: usize = 256 << 20;

/// Deepest nesting of (), [] and {} outside string literals.
fn bracket_depth(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Depth of the expression tree.
fn ast_depth(e: &IdedExpr) -> usize {
    1 + match &e.expr {
        Expr::Call(c) => c
            .target
            .iter()
            .map(|t| ast_depth(t))
            .chain(c.args.iter().map(ast_depth))
            .max()
            .unwrap_or(0),
        Expr::Select(s) => ast_depth(&s.operand),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .map(ast_depth)
        .max()
        .unwrap_or(0),
        Expr::List(l) => l.elements.iter().map(ast_depth).max().unwrap_or(0),
        Expr::Map(m) => m
            .entries
            .iter()
            .map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => ast_depth(&me.key).max(ast_depth(&me.value)),
                EntryExpr::StructField(f) => ast_depth(&f.value),
            })
            .max()
            .unwrap_or(0),
        Expr::Struct(st) => st
            .entries
            .iter()
            .map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => ast_depth(&me.key).max(ast_depth(&me.value)),
                EntryExpr::StructField(f) => ast_depth(&f.value),
            })
            .max()
            .unwrap_or(0),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

/// The functions optional selection and indexing are renamed to.
pub const OPT_SELECT: &str = "@iw.optSelect";
pub const OPT_INDEX: &str = "@iw.optIndex";

/// True when `e` syntactically yields an optional value.
fn yields_optional(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Call(c) => {
            matches!(
                c.func_name.as_str(),
                "_?._" | "_[?_]" | OPT_SELECT | OPT_INDEX | "or"
            ) || (matches!(c.func_name.as_str(), "of" | "none" | "ofNonZeroValue")
                && matches!(c.target.as_deref().map(|t| &t.expr), Some(Expr::Ident(i)) if i == "optional"))
        }
        _ => false,
    }
}

/// Renames the parser's optional operators to this module's functions and
/// refuses the optional forms that are not evaluated faithfully.
fn rewrite_optionals(e: &mut IdedExpr) -> Result<(), CelError> {
    match &mut e.expr {
        Expr::Call(c) => {
            match c.func_name.as_str() {
                "_?._" => c.func_name = OPT_SELECT.to_string(),
                "_[?_]" => c.func_name = OPT_INDEX.to_string(),
                "_[_]" if c.args.first().is_some_and(yields_optional) => {
                    return Err(CelError::Unsupported(
                        "indexing an optional value with [ ] (use [? ])".into(),
                    ))
                }
                _ => {}
            }
            if let Some(t) = c.target.as_deref_mut() {
                rewrite_optionals(t)?;
            }
            for a in &mut c.args {
                rewrite_optionals(a)?;
            }
        }
        Expr::Select(s) => {
            if yields_optional(&s.operand) {
                return Err(CelError::Unsupported(format!(
                    "selecting .{} on an optional value (use .?{})",
                    s.field, s.field
                )));
            }
            rewrite_optionals(&mut s.operand)?;
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                rewrite_optionals(x)?;
            }
        }
        Expr::List(l) => {
            if !l.optional_indices.is_empty() {
                return Err(CelError::Unsupported("optional list elements [?x]".into()));
            }
            for x in &mut l.elements {
                rewrite_optionals(x)?;
            }
        }
        Expr::Map(m) => {
            for en in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut en.expr {
                    if me.optional {
                        return Err(CelError::Unsupported("optional map entries {?k: v}".into()));
                    }
                    rewrite_optionals(&mut me.key)?;
                    rewrite_optionals(&mut me.value)?;
                }
            }
        }
        Expr::Struct(_) => return Err(CelError::Unsupported("message construction".into())),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

fn none() -> Value {
    Value::Opaque(Arc::new(OptionalValue::none()))
}

fn some(v: Value) -> Value {
    Value::Opaque(Arc::new(OptionalValue::of(v)))
}

/// The operand of an optional operator: `None` when it is `optional.none()`.
fn unwrap_operand(v: &Value) -> Option<&Value> {
    match v {
        Value::Opaque(o) => match o.downcast_ref::<OptionalValue>() {
            Some(opt) => opt.value(),
            None => Some(v),
        },
        _ => Some(v),
    }
}

/// `a.?f`.
fn opt_select(
    ftx: &FunctionContext,
    operand: Value,
    field: Arc<String>,
) -> Result<Value, ExecutionError> {
    let Some(v) = unwrap_operand(&operand) else {
        return Ok(none());
    };
    match v {
        Value::Map(m) => Ok(m
            .map
            .get(&Key::String(field.clone()))
            .cloned()
            .map(some)
            .unwrap_or_else(none)),
        other => Err(ftx.error(format!("no field .?{field} on {}", other.type_of()))),
    }
}

/// `a[?k]`.
fn opt_index(ftx: &FunctionContext, operand: Value, key: Value) -> Result<Value, ExecutionError> {
    let Some(v) = unwrap_operand(&operand) else {
        return Ok(none());
    };
    match (v, &key) {
        (Value::Map(m), _) => {
            let k = match &key {
                Value::String(s) => Key::String(s.clone()),
                Value::Int(i) => Key::Int(*i),
                Value::UInt(u) => Key::Uint(*u),
                Value::Bool(b) => Key::Bool(*b),
                other => {
                    return Err(ftx.error(format!("cannot use {} as a map key", other.type_of())))
                }
            };
            Ok(m.map.get(&k).cloned().map(some).unwrap_or_else(none))
        }
        (Value::List(l), Value::Int(i)) => Ok(usize::try_from(*i)
            .ok()
            .and_then(|i| l.get(i))
            .cloned()
            .map(some)
            .unwrap_or_else(none)),
        (Value::List(l), Value::UInt(i)) => Ok(usize::try_from(*i)
            .ok()
            .and_then(|i| l.get(i))
            .cloned()
            .map(some)
            .unwrap_or_else(none)),
        (other, k) => Err(ftx.error(format!(
            "cannot index {} with [?{}]",
            other.type_of(),
            k.type_of()
        ))),
    }
}

/// `.field` or `?.field` / `['field']` used on something in the source.
fn mentions_field(source: &str, field: &str) -> bool {
    source.match_indices(field).any(|(i, _)| {
        let before = source[..i].trim_end();
        before.ends_with('.')
            || before.ends_with(".?")
            || before.ends_with("['")
            || before.ends_with("[\"")
    })
}

thread_local! {
    /// Functions only: standard CEL, the Kubernetes libraries, Kyverno's
    /// image library. Variables go in a child scope per evaluation.
    static BASE: Context<'static> = base_context();
}

fn base_context() -> Context<'static> {
    let mut ctx = Context::default();
    ctx.register_all();
    ctx.add_function(OPT_SELECT, opt_select);
    ctx.add_function(OPT_INDEX, opt_index);
    register_image_library(&mut ctx);
    ctx
}

/// Runs `f` with a fresh scope on top of the per-thread base context.
pub fn with_scope<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
    BASE.with(|base| {
        let mut scope = base.new_inner_scope();
        f(&mut scope)
    })
}

/// Converts JSON (a Kubernetes object) into a CEL value.
pub fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A CEL map from (name, value) pairs.
pub fn cel_map(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k)), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

// ---------------------------------------------------------------------------
// Kyverno's image library (`image()`, `isImage()`, methods on the result).
//
// Kyverno parses with go-containerregistry's `name.ParseReference`; here the
// project's distribution/reference parser does it, mapped to what
// go-containerregistry answers: Docker Hub's registry is `index.docker.io`,
// one-component Hub names get `library/`, no tag means `latest`, and a
// reference with a digest is a digest reference (its tag is dropped, `tag()`
// is empty).
// ---------------------------------------------------------------------------

/// A parsed image reference, as Kyverno's `image()` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// Empty for a digest reference.
    pub tag: String,
    /// Empty for a tag reference.
    pub digest: String,
}

impl Opaque for ImageRef {
    fn runtime_type_name(&self) -> &str {
        "kyverno.image"
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let r = crate::reference::parse_normalized_named(s).map_err(|e| e.to_string())?;
        let registry = if r.domain == "docker.io" {
            "index.docker.io".to_string()
        } else {
            r.domain.clone()
        };
        let (tag, digest) = match (&r.digest, &r.tag) {
            (Some(d), _) => (String::new(), d.clone()),
            (None, Some(t)) => (t.clone(), String::new()),
            (None, None) => ("latest".to_string(), String::new()),
        };
        Ok(ImageRef {
            registry,
            repository: r.path.clone(),
            tag,
            digest,
        })
    }

    pub fn identifier(&self) -> &str {
        if self.digest.is_empty() {
            &self.tag
        } else {
            &self.digest
        }
    }
}

fn image_of(this: &Value, name: &str) -> Result<ImageRef, ExecutionError> {
    match this {
        Value::Opaque(o) => o
            .downcast_ref::<ImageRef>()
            .cloned()
            .ok_or_else(|| ExecutionError::function_error(name, "not an image")),
        _ => Err(ExecutionError::function_error(name, "not an image")),
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

/// A string field of an image, as a method returns it.
type ImageAccessor = fn(&ImageRef) -> &str;

fn register_image_library(ctx: &mut Context<'_>) {
    ctx.add_function(
        "image",
        |ftx: &FunctionContext, s: Arc<String>| -> Result<Value, ExecutionError> {
            ImageRef::parse(&s)
                .map(|i| Value::Opaque(Arc::new(i)))
                .map_err(|e| ftx.error(e))
        },
    );
    ctx.add_function("isImage", |s: Arc<String>| ImageRef::parse(&s).is_ok());
    // The string accessors of an image, by method name.
    let accessors: [(&'static str, ImageAccessor); 5] = [
        ("registry", |i| &i.registry),
        ("repository", |i| &i.repository),
        ("identifier", ImageRef::identifier),
        ("tag", |i| &i.tag),
        ("digest", |i| &i.digest),
    ];
    for (name, get) in accessors {
        ctx.add_function(
            name,
            move |This(this): This<Value>| -> Result<Value, ExecutionError> {
                Ok(string(get(&image_of(&this, name)?)))
            },
        );
    }
    ctx.add_function(
        "containsDigest",
        |This(this): This<Value>| -> Result<Value, ExecutionError> {
            Ok(Value::Bool(
                !image_of(&this, "containsDigest")?.digest.is_empty(),
            ))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_with(src: &str, object: serde_json::Value) -> Result<Value, String> {
        let p = CelProgram::compile(src).map_err(|e| e.to_string())?;
        with_scope(|ctx| {
            ctx.add_variable_from_value("object", json_to_cel(&object));
            p.eval(ctx)
        })
    }

    fn b(src: &str, object: serde_json::Value) -> bool {
        match eval_with(src, object) {
            Ok(Value::Bool(b)) => b,
            other => panic!("{src}: {other:?}"),
        }
    }

    #[test]
    fn optional_field_semantics() {
        let with_init =
            json!({"spec": {"containers": [{"image": "a"}], "initContainers": [{"image": "b"}]}});
        let without = json!({"spec": {"containers": [{"image": "a"}]}});
        let null_field = json!({"spec": {"containers": [{"image": "a"}], "initContainers": null}});
        let all = "object.spec.containers + object.spec.?initContainers.orValue([])";
        // Present: the value; absent: the default.
        assert!(b(&format!("size({all}) == 2"), with_init.clone()));
        assert!(b(&format!("size({all}) == 1"), without.clone()));
        // Present but null: the optional holds null (as in cel-go), and
        // adding null to a list is an error, not a silent pass.
        assert!(b(
            "object.spec.?initContainers.hasValue()",
            null_field.clone()
        ));
        assert!(b(
            "object.spec.?initContainers.orValue([]) == null",
            null_field.clone()
        ));
        assert!(eval_with(&format!("size({all})"), null_field).is_err());
        // hasValue / value / or
        assert!(b(
            "object.spec.?initContainers.hasValue()",
            with_init.clone()
        ));
        assert!(!b(
            "object.spec.?initContainers.hasValue()",
            without.clone()
        ));
        assert!(b(
            "object.spec.?initContainers.value()[0].image == 'b'",
            with_init.clone()
        ));
        assert!(eval_with("object.spec.?initContainers.value()", without.clone()).is_err());
        assert!(b(
            "object.spec.?initContainers.or(optional.of([1])).value() == [1]",
            without.clone()
        ));
        // Chained: absent anywhere along the chain gives none.
        assert!(b(
            "object.?status.?phase.orValue('none') == 'none'",
            without.clone()
        ));
        assert!(b("object.?spec.?containers.hasValue()", without.clone()));
        assert!(b(
            "!object.?metadata.?labels.?app.hasValue()",
            without.clone()
        ));
        // Plain selection through an optional is refused, not guessed.
        assert!(matches!(
            CelProgram::compile("object.?spec.containers.hasValue()"),
            Err(CelError::Unsupported(_))
        ));
        // Optional index on maps and lists.
        let labelled = json!({"metadata": {"labels": {"app.kubernetes.io/name": "x"}}});
        assert!(b(
            "object.metadata.labels[?'app.kubernetes.io/name'].orValue('') == 'x'",
            labelled.clone()
        ));
        assert!(b(
            "object.metadata.labels[?'nope'].orValue('d') == 'd'",
            labelled.clone()
        ));
        assert!(b(
            "object.?metadata.?annotations[?'a'].orValue('') == ''",
            labelled
        ));
        assert!(b(
            "object.spec.containers[?5].orValue({'image': 'd'}).image == 'd'",
            without.clone()
        ));
        // optional.of / none
        assert!(b("optional.none().orValue(3) == 3", json!({})));
        assert!(b("optional.of(2).orValue(3) == 2", json!({})));
        assert!(!b("optional.none().hasValue()", json!({})));
        // A non-optional select on an absent field is an error, as in CEL.
        assert!(eval_with("object.spec.initContainers", without.clone()).is_err());
        assert!(!b("has(object.spec.initContainers)", without));
    }

    #[test]
    fn kubernetes_libraries_and_macros() {
        let pod = json!({"spec": {"containers": [{"image": "ghcr.io/a/b:1", "name": "x"}]}});
        assert!(b(
            "object.spec.containers.all(c, c.image.split('/')[0] == 'ghcr.io')",
            pod.clone()
        ));
        assert!(b(
            "object.spec.containers.exists(c, c.image.matches('^ghcr'))",
            pod.clone()
        ));
        assert!(b("['a','b'].join(', ') == 'a, b'", pod.clone()));
        assert!(b(
            "size(object.spec.containers) == 1 ? true : false",
            pod.clone()
        ));
        assert!(b("'ABC'.lowerAscii() == 'abc'", pod.clone()));
        assert!(b(
            "object.spec.containers.map(c, c.name) == ['x']",
            pod.clone()
        ));
        assert!(b("'a' in ['a', 'b']", pod));
    }

    #[test]
    fn image_library() {
        let o = json!({});
        assert!(b(
            "image('nginx').registry() == 'index.docker.io'",
            o.clone()
        ));
        assert!(b(
            "image('nginx').repository() == 'library/nginx'",
            o.clone()
        ));
        assert!(b("image('nginx').tag() == 'latest'", o.clone()));
        assert!(b("image('nginx').identifier() == 'latest'", o.clone()));
        assert!(b("!image('nginx').containsDigest()", o.clone()));
        assert!(b(
            "image('ghcr.io/x/y:1.2').registry() == 'ghcr.io'",
            o.clone()
        ));
        assert!(b("image('ghcr.io/x/y:1.2').tag() == '1.2'", o.clone()));
        let d = "sha256:0123456789012345678901234567890123456789012345678901234567890123";
        assert!(b(
            &format!("image('ghcr.io/x/y:1@{d}').digest() == '{d}'"),
            o.clone()
        ));
        assert!(b(
            &format!("image('ghcr.io/x/y:1@{d}').tag() == ''"),
            o.clone()
        ));
        assert!(b(
            &format!("image('ghcr.io/x/y@{d}').identifier() == '{d}'"),
            o.clone()
        ));
        assert!(b(
            &format!("image('ghcr.io/x/y@{d}').containsDigest()"),
            o.clone()
        ));
        assert!(b("isImage('nginx:1')", o.clone()));
        assert!(!b("isImage('Not An Image')", o.clone()));
        assert!(eval_with("image('not an image')", o).is_err());
        // An accessor on something else names itself in the error.
        for m in ["registry", "repository", "identifier", "tag", "digest"] {
            let e = eval_with(&format!("'nginx'.{m}()"), json!({})).unwrap_err();
            assert!(e.contains(m) && e.contains("not an image"), "{m}: {e}");
        }
    }

    #[test]
    fn unknowable_is_refused_by_name() {
        for (src, name) in [
            ("request.userInfo.username == 'x'", "request.userInfo"),
            (
                "authorizer.serviceAccount('a','b').group('').resource('pods').check('get').allowed()",
                "authorizer",
            ),
            ("oldObject.spec == object.spec", "oldObject"),
            ("resource.Get('v1', 'configmaps', 'ns', 'n').data.x == 'y'", "resource"),
            ("http.Get('https://x').ok", "http"),
        ] {
            match CelProgram::compile(src) {
                Err(CelError::Unenforceable(what)) => assert!(what.starts_with(name), "{src}: {what}"),
                other => panic!("{src}: {other:?}"),
            }
        }
        // A variable named like a field is fine.
        assert!(CelProgram::compile("object.metadata.name == 'resource'").is_ok());
        assert!(CelProgram::compile("request.operation == 'CREATE'").is_ok());
        assert!(matches!(
            CelProgram::compile("a.b("),
            Err(CelError::Syntax(_))
        ));
    }

    /// Token soup from a fixed generator: compile and evaluation answer
    /// (an error or a value), never panic.
    #[test]
    fn token_soup_never_panics() {
        const TOKS: &[&str] = &[
            "object",
            ".",
            ".?",
            "spec",
            "containers",
            "[",
            "]",
            "[?",
            "(",
            ")",
            "{",
            "}",
            ",",
            ":",
            "'a'",
            "\"b",
            "1",
            "2u",
            "-3.5",
            "true",
            "null",
            "+",
            "-",
            "*",
            "/",
            "%",
            "==",
            "!=",
            "<",
            ">=",
            "&&",
            "||",
            "!",
            "?",
            "in",
            "all",
            "exists",
            "map",
            "filter",
            "c",
            "size",
            "has",
            "image",
            "orValue",
            "optional",
            "of",
            "none",
            "matches",
            "split",
            "startsWith",
            "'^(('",
            "b'x'",
            "1e999",
            "9223372036854775808",
            " ",
            "x",
            "_",
            "@",
            "#",
            "`",
        ];
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pod = json!({"spec": {"containers": [{"image": "a"}]}});
        for _ in 0..1500 {
            let n = 1 + (next() % 24) as usize;
            let src: String = (0..n)
                .map(|_| TOKS[(next() % TOKS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join("");
            let _ = eval_with(&src, pod.clone());
        }
    }

    #[test]
    fn hostile_expressions_are_refused_not_crashed() {
        for src in [
            "(".repeat(100_000),
            "[".repeat(5000) + &"]".repeat(5000),
            vec!["a"; 20_000].join(" + "),
            "x".repeat(70_000),
        ] {
            assert!(
                matches!(CelProgram::compile(&src), Err(CelError::Syntax(_))),
                "{}",
                &src[..20]
            );
        }
        assert!(CelProgram::compile(&(vec!["1"; 50].join(" + ") + " == 50")).is_ok());
    }
}
