//! Loading policy files: single or multi-document YAML mixing native
//! `ImagePolicy` and Kyverno `ClusterPolicy`/`Policy`/`ValidatingPolicy`
//! documents. Errors name the file and line (and column where serde gives
//! one); semantic errors name the policy, rule and field, at the line of the
//! offending key when it can be found.
use std::path::Path;

use serde_yaml::Value;

use crate::eval::PolicySet;
use crate::model::{InvalidPolicy, PolicyError, Warning};
use crate::{kyverno, native};

/// One YAML document of a file, with where it starts.
pub(crate) struct DocSource<'a> {
    pub file: &'a str,
    pub text: &'a str,
    /// 1-based line in the file of the document's first line.
    pub first_line: usize,
}

impl DocSource<'_> {
    /// Finds the line (in the file) of `key:` for a field path such as
    /// `match.kinds`, looking after the rule's `name: RULE` line when a rule
    /// is given. Best effort: `None` when not found.
    pub fn line_of(&self, rule: Option<&str>, field: &str) -> Option<usize> {
        let key = field.rsplit('.').next().unwrap_or(field);
        let key = key.split('[').next().unwrap_or(key);
        let lines: Vec<&str> = self.text.lines().collect();
        let mut start = 0;
        if let Some(rule) = rule {
            let found = lines.iter().position(|l| {
                let t = l.trim_start().trim_start_matches("- ").trim();
                t.strip_prefix("name:")
                    .is_some_and(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == rule)
            });
            if let Some(i) = found {
                // The key may sit before `name:` within the same list item:
                // search from the item's start (the closest `- ` above).
                let indent = lines[i].len() - lines[i].trim_start().len();
                start = (0..=i)
                    .rev()
                    .find(|&j| {
                        let l = lines[j];
                        let ind = l.len() - l.trim_start().len();
                        l.trim_start().starts_with("- ") && ind <= indent
                    })
                    .unwrap_or(i);
            }
        }
        let pat = format!("{key}:");
        lines[start..]
            .iter()
            .position(|l| {
                let t = l.trim_start();
                let t = t.trim_start_matches("- ").trim_start();
                t.starts_with(&pat) || t.starts_with(&format!("\"{key}\":"))
            })
            .map(|i| self.first_line + start + i)
    }

    pub fn invalid(
        &self,
        policy: Option<&str>,
        rule: Option<&str>,
        field: &str,
        message: String,
    ) -> PolicyError {
        PolicyError::Invalid(Box::new(InvalidPolicy {
            file: self.file.to_string(),
            line: self.line_of(rule, field).or(Some(self.first_line)),
            policy: policy.map(str::to_string),
            rule: rule.map(str::to_string),
            field: Some(field.to_string()),
            message,
        }))
    }

    /// A warning about one rule of a policy of this document.
    pub fn warning(&self, policy: &str, rule: &str, message: String) -> Warning {
        Warning {
            source: self.file.to_string(),
            policy: policy.to_string(),
            rule: Some(rule.to_string()),
            message,
        }
    }

    pub fn syntax(&self, e: &serde_yaml::Error) -> PolicyError {
        let (line, column) = yaml_error_position(e, self.text, self.first_line);
        PolicyError::Syntax {
            file: self.file.to_string(),
            line,
            column,
            message: strip_location(&e.to_string()),
        }
    }
}

/// Position (file line, column) of a serde_yaml error in a document that
/// starts at `first_line`. Errors found at the end of input (an unclosed
/// bracket or quote) are moved back to the document's last non-blank line.
pub(crate) fn yaml_error_position(
    e: &serde_yaml::Error,
    text: &str,
    first_line: usize,
) -> (usize, usize) {
    let last = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(1);
    match e.location() {
        Some(l) if l.line() > last => (last + first_line - 1, 1),
        Some(l) => (l.line() + first_line - 1, l.column()),
        None => (first_line, 1),
    }
}

/// serde_yaml appends " at line L column C" to its messages; the location is
/// reported separately (relative to the file, not the document).
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Splits a multi-document YAML text at `---` lines. Returns each document's
/// text and its first line (1-based). Column positions are kept.
pub(crate) fn split_documents(text: &str) -> Vec<(String, usize)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut first = 1usize;
    for (i, line) in text.lines().enumerate() {
        let is_start = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.trim_end() == "---";
        let is_end = line.trim_end() == "...";
        if is_start || is_end {
            docs.push((std::mem::take(&mut cur), first));
            first = i + 1;
            if is_start && line.trim_end().len() > 3 {
                // Content after `--- ` on the same line belongs to the document.
                cur.push_str("   ");
                cur.push_str(&line[3..]);
            }
            cur.push('\n');
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((cur, first));
    docs.into_iter()
        .filter(|(d, _)| {
            d.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
        })
        .collect()
}

/// Reads and compiles a policy file.
pub fn load_policy_file(path: impl AsRef<Path>) -> Result<PolicySet, PolicyError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        file: name.clone(),
        source,
    })?;
    load_policy_str(&text, &name)
}

/// Compiles policy text; `source_name` is used in messages (a file name).
/// Deepest flow nesting (`{`, `[`) accepted: serde_yaml's own recursion
/// limit. Checked before parsing, in linear time, because the YAML parser
/// spends quadratic time on deep flow nesting before it reaches its limit.
pub(crate) const MAX_FLOW_DEPTH: usize = 128;

/// Where (1-based line, column) flow nesting first exceeds
/// [`MAX_FLOW_DEPTH`], ignoring brackets in quoted scalars and comments.
pub(crate) fn flow_depth_exceeded(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let (mut single, mut double, mut comment, mut escaped) = (false, false, false, false);
    let mut prev = '\n';
    for c in text.chars() {
        col += 1;
        if c == '\n' {
            line += 1;
            col = 0;
            comment = false;
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        if double {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                double = false;
            }
        } else if single {
            if c == '\'' {
                single = false;
            }
        } else {
            match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' => double = true,
                '\'' => single = true,
                '{' | '[' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some((line, col));
                    }
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    None
}

pub fn load_policy_str(text: &str, source_name: &str) -> Result<PolicySet, PolicyError> {
    if let Some((line, column)) = flow_depth_exceeded(text) {
        return Err(PolicyError::Syntax {
            file: source_name.to_string(),
            line,
            column,
            message: format!(
                "recursion limit exceeded: flow nesting deeper than {MAX_FLOW_DEPTH} levels"
            ),
        });
    }
    let mut loader = Loader {
        file: source_name,
        set: PolicySet::new(),
        found: false,
        vap: crate::vpol::VapDocs::default(),
    };
    for (doc, first_line) in split_documents(text) {
        loader.add_document(&doc, first_line)?;
    }
    loader.finish()
}

/// What the documents of one file have given so far.
struct Loader<'a> {
    file: &'a str,
    set: PolicySet,
    /// A policy document was seen (a file with none is an error).
    found: bool,
    /// ValidatingAdmissionPolicies, their bindings and params: linked once
    /// every document has been read.
    vap: crate::vpol::VapDocs,
}

impl Loader<'_> {
    /// Reads one document and compiles it by its `apiVersion` and `kind`.
    fn add_document(&mut self, doc: &str, first_line: usize) -> Result<(), PolicyError> {
        let src = DocSource {
            file: self.file,
            text: doc,
            first_line,
        };
        let value: Value = serde_yaml::from_str(doc).map_err(|e| src.syntax(&e))?;
        if value.is_null() {
            return Ok(());
        }
        let Some(map) = value.as_mapping() else {
            return Err(PolicyError::Invalid(Box::new(InvalidPolicy {
                file: self.file.to_string(),
                line: Some(first_line),
                policy: None,
                rule: None,
                field: None,
                message: "a policy document must be a mapping".into(),
            })));
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
        let group = api_version.split('/').next().unwrap_or("");
        if group == native::API_GROUP {
            self.add_native(&src, api_version, kind)
        } else if group == "kyverno.io" || group == "policies.kyverno.io" {
            let imported = kyverno::import(&value, &src)?;
            self.set.extend(imported);
            self.found = true;
            Ok(())
        } else if group == "admissionregistration.k8s.io"
            && (kind == "ValidatingAdmissionPolicy" || kind == "ValidatingAdmissionPolicyBinding")
        {
            self.add_vap(&src, &value, api_version, kind)
        } else if !kind.is_empty()
            && !api_version.is_empty()
            && value.get("metadata").is_some()
            && kind != "List"
        {
            // Any other Kubernetes object (a ConfigMap...) may be the params
            // of a ValidatingAdmissionPolicy; unused ones are reported in
            // `finish`.
            if let Some(p) = crate::vpol::ParamObject::from_doc(&value) {
                self.vap.params.push(p);
            }
            Ok(())
        } else {
            Err(src.invalid(
                None,
                None,
                if api_version.is_empty() { "apiVersion" } else { "kind" },
                format!(
                    "not a policy: apiVersion {api_version:?} kind {kind:?} (expected {} {} or a Kyverno ClusterPolicy/Policy)",
                    native::API_VERSION,
                    native::KIND
                ),
            ))
        }
    }

    /// A document of the `imagewarden.dev` group.
    fn add_native(
        &mut self,
        src: &DocSource<'_>,
        api_version: &str,
        kind: &str,
    ) -> Result<(), PolicyError> {
        if kind != native::KIND {
            return Err(src.invalid(
                None,
                None,
                "kind",
                format!(
                    "unknown kind {kind:?} in {api_version}; expected {}",
                    native::KIND
                ),
            ));
        }
        let parsed: native::ImagePolicyDoc =
            serde_yaml::from_str(src.text).map_err(|e| src.syntax(&e))?;
        let (policy, warnings) = native::compile(parsed, src)?;
        self.set.policies.push(policy);
        self.set.warnings.extend(warnings);
        self.found = true;
        Ok(())
    }

    /// A ValidatingAdmissionPolicy or its binding: kept until every
    /// document has been read.
    fn add_vap(
        &mut self,
        src: &DocSource<'_>,
        value: &Value,
        api_version: &str,
        kind: &str,
    ) -> Result<(), PolicyError> {
        if api_version != "admissionregistration.k8s.io/v1" {
            return Err(src.invalid(
                None,
                None,
                "apiVersion",
                format!("{kind} {api_version} is not supported (expected admissionregistration.k8s.io/v1)"),
            ));
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                src.invalid(
                    None,
                    None,
                    "metadata",
                    format!("{kind} has no metadata.name"),
                )
            })?
            .to_string();
        let spec = value
            .get("spec")
            .and_then(Value::as_mapping)
            .cloned()
            .ok_or_else(|| src.invalid(Some(&name), None, "spec", format!("{kind} has no spec")))?;
        let entry = (
            name,
            spec,
            self.file.to_string(),
            src.first_line,
            src.text.to_string(),
        );
        if kind == "ValidatingAdmissionPolicy" {
            self.vap.policies.push(entry);
        } else {
            self.vap.bindings.push(entry);
        }
        self.found = true;
        Ok(())
    }

    /// Links the ValidatingAdmissionPolicies; an object no policy reads as
    /// its params, or a file with no policy, is an error.
    fn finish(mut self) -> Result<PolicySet, PolicyError> {
        let params: Vec<String> = self
            .vap
            .params
            .iter()
            .map(|p| format!("{} {}", p.kind, p.name))
            .collect();
        let has_vap = !self.vap.policies.is_empty();
        crate::vpol::link_vaps(self.vap, &mut self.set);
        if !has_vap && !params.is_empty() {
            return Err(PolicyError::Invalid(Box::new(InvalidPolicy {
                file: self.file.to_string(),
                line: None,
                policy: None,
                rule: None,
                field: Some("kind".into()),
                message: format!(
                    "not a policy: {} (other objects are only read as the params of a ValidatingAdmissionPolicy)",
                    params.join(", ")
                ),
            })));
        }
        if !self.found {
            return Err(PolicyError::Empty {
                file: self.file.to_string(),
            });
        }
        Ok(self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_lines() {
        let t = "a: 1\n---\n# c\nb: 2\n--- \n\n---\nc: 3\n";
        let d = split_documents(t);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].1, 1);
        assert_eq!(d[1].1, 2);
        assert_eq!(d[2].1, 7);
    }
}
