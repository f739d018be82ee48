//! The previous, hand-written subset of CEL (superseded by [`crate::cel`],
//! kept for the benchmark that compares the two engines). A deliberately small subset of CEL: enough to import Kyverno's CEL
//! registry checks of the form
//!
//! ```text
//! variables.allContainers.all(c, c.image.startsWith('a/') || c.image.startsWith('b/'))
//! ```
//!
//! where the list is `object.spec.containers`, optionally `+
//! object.spec.?initContainers.orValue([])` and `+
//! object.spec.?ephemeralContainers.orValue([])` (directly or through a
//! variable). The body may combine `startsWith`, `endsWith`, `contains` and
//! `==`/`!=` on the image with `&&`, `||`, `!` and parentheses. Anything else
//! is rejected with a reason, and the importer reports the rule as not
//! enforced.
use std::collections::BTreeMap;

use crate::model::ContainerType;

/// A compiled boolean test on an image string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CelExpr {
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Equals(String),
    Not(Box<CelExpr>),
    And(Vec<CelExpr>),
    Or(Vec<CelExpr>),
    Const(bool),
}

impl CelExpr {
    pub fn eval_image(&self, image: &str) -> bool {
        match self {
            CelExpr::StartsWith(s) => image.starts_with(s.as_str()),
            CelExpr::EndsWith(s) => image.ends_with(s.as_str()),
            CelExpr::Contains(s) => image.contains(s.as_str()),
            CelExpr::Equals(s) => image == s,
            CelExpr::Not(e) => !e.eval_image(image),
            CelExpr::And(es) => es.iter().all(|e| e.eval_image(image)),
            CelExpr::Or(es) => es.iter().any(|e| e.eval_image(image)),
            CelExpr::Const(b) => *b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    OptDot,
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Plus,
    Or,
    And,
    Not,
    Eq,
    Ne,
}

/// Operators and punctuation, longest first where one is the prefix of
/// another (`.?` before `.`, `!=` before `!`).
const PUNCT: &[(&str, Tok)] = &[
    (".?", Tok::OptDot),
    ("||", Tok::Or),
    ("&&", Tok::And),
    ("==", Tok::Eq),
    ("!=", Tok::Ne),
    (".", Tok::Dot),
    ("(", Tok::LParen),
    (")", Tok::RParen),
    ("[", Tok::LBrack),
    ("]", Tok::RBrack),
    (",", Tok::Comma),
    ("+", Tok::Plus),
    ("!", Tok::Not),
];

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if matches!(ch, ' ' | '\t' | '\n' | '\r') {
            i += 1;
            continue;
        }
        let rest = &c[i..];
        if let Some((p, tok)) = PUNCT
            .iter()
            .find(|(p, _)| rest.len() >= p.len() && p.chars().eq(rest[..p.len()].iter().copied()))
        {
            out.push(tok.clone());
            i += p.len();
            continue;
        }
        match ch {
            '\'' | '"' => {
                let (lit, end) = string_literal(&c, i)?;
                out.push(Tok::Str(lit));
                i = end;
            }
            x if x.is_ascii_alphabetic() || x == '_' => {
                let st = i;
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(c[st..i].iter().collect()));
            }
            x => return Err(format!("unsupported CEL token {x:?}")),
        }
    }
    Ok(out)
}

/// The string literal whose opening quote is at `c[start]`: its value and
/// the index after its closing quote.
fn string_literal(c: &[char], start: usize) -> Result<(String, usize), String> {
    let q = c[start];
    let mut i = start + 1;
    let mut lit = String::new();
    loop {
        match c.get(i) {
            None => return Err("unterminated string literal".into()),
            Some(&x) if x == q => return Ok((lit, i + 1)),
            Some('\\') => {
                match c.get(i + 1) {
                    Some(&e @ ('\\' | '\'' | '"')) => lit.push(e),
                    Some('n') => lit.push('\n'),
                    Some('t') => lit.push('\t'),
                    _ => return Err("unsupported escape in string literal".into()),
                }
                i += 2;
            }
            Some(&x) => {
                lit.push(x);
                i += 1;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Ident(String),
    Str(String),
    List(Vec<Ast>),
    Member(Box<Ast>, String, bool),
    Call(Box<Ast>, String, Vec<Ast>),
    Or(Box<Ast>, Box<Ast>),
    And(Box<Ast>, Box<Ast>),
    Not(Box<Ast>),
    Eq(Box<Ast>, Box<Ast>),
    Ne(Box<Ast>, Box<Ast>),
    Add(Box<Ast>, Box<Ast>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &Tok) -> Result<(), String> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(format!("expected {t:?}"))
        }
    }
    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("expression nested too deeply".into());
        }
        Ok(())
    }
    fn or(&mut self) -> Result<Ast, String> {
        self.enter()?;
        let mut l = self.and()?;
        while self.eat(&Tok::Or) {
            let r = self.and()?;
            l = Ast::Or(Box::new(l), Box::new(r));
        }
        self.depth -= 1;
        Ok(l)
    }
    fn and(&mut self) -> Result<Ast, String> {
        let mut l = self.eq()?;
        while self.eat(&Tok::And) {
            let r = self.eq()?;
            l = Ast::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn eq(&mut self) -> Result<Ast, String> {
        let l = self.add()?;
        if self.eat(&Tok::Eq) {
            let r = self.add()?;
            return Ok(Ast::Eq(Box::new(l), Box::new(r)));
        }
        if self.eat(&Tok::Ne) {
            let r = self.add()?;
            return Ok(Ast::Ne(Box::new(l), Box::new(r)));
        }
        Ok(l)
    }
    fn add(&mut self) -> Result<Ast, String> {
        let mut l = self.unary()?;
        while self.eat(&Tok::Plus) {
            let r = self.unary()?;
            l = Ast::Add(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Ast, String> {
        if self.eat(&Tok::Not) {
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Ast::Not(Box::new(e)));
        }
        self.postfix()
    }
    fn postfix(&mut self) -> Result<Ast, String> {
        let mut e = self.primary()?;
        loop {
            let optional = if self.eat(&Tok::Dot) {
                false
            } else if self.eat(&Tok::OptDot) {
                true
            } else {
                break;
            };
            let name = match self.peek() {
                Some(Tok::Ident(n)) => n.clone(),
                _ => return Err("expected a field or method name after '.'".into()),
            };
            self.pos += 1;
            if !optional && self.eat(&Tok::LParen) {
                let mut args = Vec::new();
                if !self.eat(&Tok::RParen) {
                    loop {
                        args.push(self.or()?);
                        if self.eat(&Tok::RParen) {
                            break;
                        }
                        self.expect(&Tok::Comma)?;
                    }
                }
                e = Ast::Call(Box::new(e), name, args);
            } else {
                e = Ast::Member(Box::new(e), name, optional);
            }
        }
        Ok(e)
    }
    fn primary(&mut self) -> Result<Ast, String> {
        match self.peek().cloned() {
            Some(Tok::Ident(n)) => {
                self.pos += 1;
                Ok(Ast::Ident(n))
            }
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Ast::Str(s))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                self.expect(&Tok::RParen)?;
                Ok(e)
            }
            Some(Tok::LBrack) => {
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat(&Tok::RBrack) {
                    loop {
                        items.push(self.or()?);
                        if self.eat(&Tok::RBrack) {
                            break;
                        }
                        self.expect(&Tok::Comma)?;
                    }
                }
                Ok(Ast::List(items))
            }
            t => Err(format!("unexpected {t:?}")),
        }
    }
}

fn parse(s: &str) -> Result<Ast, String> {
    let toks = tokenize(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err("trailing tokens".into());
    }
    Ok(e)
}

fn is_object_spec(a: &Ast) -> bool {
    matches!(a, Ast::Member(o, f, false) if f == "spec" && matches!(&**o, Ast::Ident(x) if x == "object"))
}

/// The container types a list expression covers.
fn container_list(
    a: &Ast,
    vars: &BTreeMap<String, Vec<ContainerType>>,
) -> Result<Vec<ContainerType>, String> {
    match a {
        Ast::Add(l, r) => {
            let mut v = container_list(l, vars)?;
            for t in container_list(r, vars)? {
                if !v.contains(&t) {
                    v.push(t);
                }
            }
            Ok(v)
        }
        Ast::Member(o, f, false) if is_object_spec(o) => ContainerType::from_field(f)
            .map(|t| vec![t])
            .ok_or_else(|| format!("object.spec.{f} is not a container list")),
        Ast::Call(t, m, args)
            if m == "orValue"
                && args.len() == 1
                && matches!(&args[0], Ast::List(l) if l.is_empty()) =>
        {
            match &**t {
                Ast::Member(o, f, true) if is_object_spec(o) => ContainerType::from_field(f)
                    .map(|t| vec![t])
                    .ok_or_else(|| format!("object.spec.?{f} is not a container list")),
                _ => Err("unsupported orValue() target".into()),
            }
        }
        Ast::Member(o, name, false) if matches!(&**o, Ast::Ident(x) if x == "variables") => vars
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown or unsupported variable {name}")),
        _ => Err("unsupported container list expression".into()),
    }
}

fn is_image_of(a: &Ast, var: &str) -> bool {
    matches!(a, Ast::Member(o, f, false) if f == "image" && matches!(&**o, Ast::Ident(x) if x == var))
}

fn body(a: &Ast, var: &str) -> Result<CelExpr, String> {
    Ok(match a {
        Ast::Or(l, r) => CelExpr::Or(vec![body(l, var)?, body(r, var)?]),
        Ast::And(l, r) => CelExpr::And(vec![body(l, var)?, body(r, var)?]),
        Ast::Not(e) => CelExpr::Not(Box::new(body(e, var)?)),
        Ast::Ident(x) if x == "true" => CelExpr::Const(true),
        Ast::Ident(x) if x == "false" => CelExpr::Const(false),
        Ast::Call(t, m, args) if is_image_of(t, var) && args.len() == 1 => {
            let Ast::Str(s) = &args[0] else {
                return Err(format!("{m}() needs a string literal"));
            };
            match m.as_str() {
                "startsWith" => CelExpr::StartsWith(s.clone()),
                "endsWith" => CelExpr::EndsWith(s.clone()),
                "contains" => CelExpr::Contains(s.clone()),
                _ => return Err(format!("unsupported method {m}() on the image")),
            }
        }
        Ast::Eq(l, r) | Ast::Ne(l, r) => {
            let s = match (&**l, &**r) {
                (x, Ast::Str(s)) if is_image_of(x, var) => s.clone(),
                (Ast::Str(s), x) if is_image_of(x, var) => s.clone(),
                _ => return Err("unsupported comparison".into()),
            };
            let e = CelExpr::Equals(s);
            if matches!(a, Ast::Ne(..)) {
                CelExpr::Not(Box::new(e))
            } else {
                e
            }
        }
        _ => return Err("unsupported expression in the container test (only image startsWith/endsWith/contains/==/!= with && || !)".into()),
    })
}

/// Compiles the `variables` (name, expression) and `expressions` of a
/// Kyverno CEL rule into one test per container type (`None`: not checked).
pub fn compile_rule(
    variables: &[(String, String)],
    expressions: &[String],
) -> Result<[Option<CelExpr>; 3], String> {
    let mut vars: BTreeMap<String, Vec<ContainerType>> = BTreeMap::new();
    for (name, expr) in variables {
        let ast = parse(expr).map_err(|e| format!("variable {name}: {e}: {expr}"))?;
        let list =
            container_list(&ast, &vars).map_err(|e| format!("variable {name}: {e}: {expr}"))?;
        vars.insert(name.clone(), list);
    }
    let mut per: [Vec<CelExpr>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for expr in expressions {
        let ast = parse(expr).map_err(|e| format!("{e}: {expr}"))?;
        let Ast::Call(list, m, args) = &ast else {
            return Err(format!("expected LIST.all(var, test): {expr}"));
        };
        if m != "all" || args.len() != 2 {
            return Err(format!("expected LIST.all(var, test), got .{m}(): {expr}"));
        }
        let Ast::Ident(var) = &args[0] else {
            return Err(format!(
                "expected a variable name as first argument of all(): {expr}"
            ));
        };
        let types = container_list(list, &vars).map_err(|e| format!("{e}: {expr}"))?;
        let test = body(&args[1], var).map_err(|e| format!("{e}: {expr}"))?;
        for t in types {
            per[t.index()].push(test.clone());
        }
    }
    Ok(per.map(|mut v| match v.len() {
        0 => None,
        1 => v.pop(),
        _ => Some(CelExpr::And(v)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kyverno_cel_registry_policy() {
        let vars = vec![(
            "allContainers".to_string(),
            "object.spec.containers + object.spec.?initContainers.orValue([]) + object.spec.?ephemeralContainers.orValue([])".to_string(),
        )];
        let exprs = vec!["variables.allContainers.all(container, container.image.startsWith('eu.foo.io/') || container.image.startsWith('bar.io/'))".to_string()];
        let t = compile_rule(&vars, &exprs).unwrap();
        for e in t.iter() {
            let e = e.as_ref().unwrap();
            assert!(e.eval_image("eu.foo.io/x"));
            assert!(e.eval_image("bar.io/x:1"));
            assert!(!e.eval_image("bar.io"));
            assert!(!e.eval_image("busybox"));
        }
        let t = compile_rule(
            &[],
            &[
                "object.spec.containers.all(c, !(c.image == 'x') && c.image.endsWith(':1'))"
                    .to_string(),
            ],
        )
        .unwrap();
        assert!(t[1].is_none());
        assert!(t[0].as_ref().unwrap().eval_image("a:1"));
        assert!(!t[0].as_ref().unwrap().eval_image("x"));
        assert!(compile_rule(
            &[],
            &["object.spec.containers.all(c, c.image.matches('x'))".to_string()]
        )
        .is_err());
        assert!(compile_rule(
            &[],
            &["object.spec.containers.exists(c, c.image == 'x')".to_string()]
        )
        .is_err());
        assert!(compile_rule(&[], &["((((((((".to_string()]).is_err());
    }
}
