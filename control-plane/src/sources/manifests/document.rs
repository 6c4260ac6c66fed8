//! Reading manifest text the way the Kubernetes API server reads a request
//! body: YAML documents one after another, a syntax error or a duplicated
//! key refused with its line and column, and (once a document is read into
//! its Kubernetes type) every field the type does not have named, as
//! `kubectl`'s strict field validation does.

use std::fmt;

use serde::Deserialize as _;
use serde_json::Value;

/// Why a manifest file stops being readable at some document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The document the error is in, from 1.
    pub document: usize,
    /// Line and column of the error (1-based), when the parser knows them.
    pub location: Option<(usize, usize)>,
    /// What is wrong, as the YAML parser says it.
    pub reason: String,
    /// The parser cannot go on past this error (a syntax error): the
    /// documents after it are not read.
    pub ends_file: bool,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parser's message already ends with "at line L column C".
        write!(f, "invalid YAML: {}", self.reason)?;
        if self.ends_file {
            write!(f, " (the documents after it were not read)")?;
        }
        Ok(())
    }
}

impl std::error::Error for YamlError {}

/// The documents of a manifest file, in order, each as its JSON value
/// (`Value::Null` for an empty document, so numbering stays 1-based and
/// matches the file) or the reason it is not valid YAML.
///
/// A mapping with the same key twice is an error naming the key, as the API
/// server's decoder makes it; the documents after it are read. Any other
/// error (a syntax error, an alias to an unknown anchor) ends the file
/// ([`YamlError::ends_file`]): the YAML parser cannot find the next document
/// after one (it would report the same error for ever, or panic), so the
/// documents after it are not read.
pub fn documents(text: &str) -> Vec<Result<Value, YamlError>> {
    let mut out: Vec<Result<Value, YamlError>> = Vec::new();
    // A file has no more documents than lines; a parser that says otherwise
    // is stopped.
    let most = text.lines().count() + 1;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let document = out.len() + 1;
        if document > most {
            out.push(Err(YamlError {
                document,
                location: None,
                reason: format!("more documents than the file has lines ({most})"),
                ends_file: true,
            }));
            break;
        }
        // serde_yaml_ng panics on some malformed input (a document after an
        // alias to an unknown anchor): that is an error here, never a crash.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serde_yaml_ng::Value::deserialize(doc)
        }));
        let Ok(read) = read else {
            out.push(Err(YamlError {
                document,
                location: None,
                reason: "the YAML parser failed on this document".into(),
                ends_file: true,
            }));
            break;
        };
        let value = read
            .map_err(|e| YamlError {
                document,
                location: e.location().map(|l| (l.line(), l.column())),
                reason: e.to_string(),
                // Only a duplicated key leaves the parser able to go on: it
                // is found once the document is read whole. After any other
                // error (syntax, an unknown anchor) the rest of the stream
                // is not where the parser thinks it is.
                ends_file: !e.to_string().contains("duplicate entry"),
            })
            .and_then(|yaml| {
                serde_json::to_value(yaml).map_err(|e| YamlError {
                    document,
                    location: None,
                    reason: format!("not representable as JSON: {e}"),
                    ends_file: false,
                })
            });
        let ends_file = value.as_ref().is_err_and(|e| e.ends_file);
        out.push(value);
        if ends_file {
            break;
        }
    }
    out
}

/// The fields of `given` (a document as written) that are absent from
/// `known` (the same document after a round trip through its Kubernetes
/// type), as paths like `spec.ports[0].targetPrt`: the fields the type does
/// not have, which the API server's strict field validation refuses.
///
/// A field set to `null`, `[]` or `{}` that the type leaves out when empty
/// is not unknown (it means the same as leaving it out).
pub fn unknown_fields(given: &Value, known: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(given, known, &mut String::new(), &mut out);
    out
}

fn walk(given: &Value, known: &Value, path: &mut String, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match k.get(key) {
                    Some(known) => walk(value, known, path, out),
                    None if is_empty(value) => {}
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (value, known)) in g.iter().zip(k).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(value, known, path, out);
                path.truncate(len);
            }
        }
        // Free-form values (a string field given a number is a type error
        // the typed read already reported) end the walk.
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: demo\nspec:\n  selector:\n    app: echo\n  ports:\n  - {name: http, port: 80, targetPort: http}\n";

    #[test]
    fn an_unclosed_flow_mapping_is_one_error_with_its_place() {
        let text = SERVICE.replace("targetPort: http}", "targetPort: http");
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n{text}---\n{SERVICE}"
        );
        let docs = documents(&text);
        assert_eq!(docs.len(), 2, "nothing after the error is read");
        assert!(docs[0].is_ok(), "the document before the error is read");
        let error = docs[1].clone().expect_err("a syntax error");
        assert_eq!(error.document, 2);
        assert!(error.ends_file);
        assert_eq!(error.location, Some((16, 1)));
        assert!(
            error.to_string().contains(
                "while parsing a flow mapping at line 15 column 5 (the documents after it were not read)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_duplicated_key_is_an_error_naming_it() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels: {a: b}\n  labels: {c: d}\n";
        let docs = documents(&format!("{text}---\n{SERVICE}"));
        assert_eq!(docs.len(), 2, "the documents after it are read");
        let error = docs[0].clone().expect_err("duplicate key");
        assert_eq!(error.document, 1);
        assert!(!error.ends_file);
        assert_eq!(docs[1].as_ref().expect("next document")["kind"], "Service");
        assert!(
            error.reason.contains("duplicate entry with key \"labels\""),
            "{error}"
        );
        assert_eq!(error.location, Some((4, 3)));
    }

    #[test]
    fn an_alias_to_an_unknown_anchor_ends_the_file_without_a_panic() {
        let docs = documents("a: {b: *nowhere}\n---\nc: 1\n");
        assert_eq!(docs.len(), 1);
        let error = docs[0].clone().expect_err("unknown anchor");
        assert!(error.ends_file);
        assert!(error.reason.contains("unknown anchor"), "{error}");
    }

    #[test]
    fn empty_documents_keep_their_numbers() {
        let docs = documents("---\n---\na: 1\n");
        assert_eq!(docs, [Ok(Value::Null), Ok(json!({"a": 1}))]);
    }

    #[test]
    fn unknown_fields_are_named_by_path() {
        let given = json!({
            "spec": {"selecter": {"app": "x"}, "ports": [{"port": 80, "targetPrt": 8080}],
                     "clusterIP": null, "externalIPs": []},
            "metadata": {"name": "x", "labels": {"free": "form"}}
        });
        let known = json!({
            "spec": {"ports": [{"port": 80}]},
            "metadata": {"name": "x", "labels": {"free": "form"}}
        });
        assert_eq!(
            unknown_fields(&given, &known),
            ["spec.ports[0].targetPrt", "spec.selecter"]
        );
    }

    /// Any prefix or byte-level mutation of a manifest is read, or refused,
    /// in bounded time and with a bounded number of documents.
    fn bounded(text: &str) -> Result<(), TestCaseError> {
        let started = Instant::now();
        let docs = documents(text);
        prop_assert!(docs.len() <= text.lines().count() + 2);
        prop_assert!(started.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("HAWSER_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn fuzz_truncated_manifests_end_quickly(cut in 0..SERVICE.len() * 2) {
            let text = format!("{SERVICE}---\n{SERVICE}");
            let cut = text.floor_char_boundary(cut.min(text.len()));
            bounded(&text[..cut])?;
        }

        #[test]
        fn fuzz_mutated_manifests_end_quickly(
            edits in prop::collection::vec((0..SERVICE.len() * 2, prop::sample::select(
                vec!['{', '}', '[', ']', ':', '-', ' ', '\n', '"', '\'', '&', '*', '!', '#', '|', '>', '\t', 'x'])), 1..8)
        ) {
            let mut text = format!("{SERVICE}---\n{SERVICE}").into_bytes();
            for (at, c) in edits {
                let at = at % text.len();
                text[at] = c as u8;
            }
            bounded(&String::from_utf8_lossy(&text))?;
        }
    }
}
