//! Text-preserving edits of a conflist's `plugins` array.
//!
//! The entry is spliced into the original text right after the last plugin,
//! as `,` + the whitespace that precedes that plugin + the entry, and removal
//! cuts exactly the span from the end of the preceding plugin to the end of
//! ours. So everything else in the file keeps its bytes, and an uninstall
//! restores the file byte for byte, even after the primary CNI rewrote it in
//! between (we only ever remove what we find).

use serde_json::Value;

use crate::cni::SUPPORTED_VERSIONS;

/// The `type` that identifies our entry.
pub const PLUGIN_TYPE: &str = "hawser-cni";

/// Why a configuration file cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflistError {
    /// Not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// A single-plugin `.conf` (no `plugins` array).
    #[error(
        "has no \"plugins\" array (a single-plugin .conf); hawser-cni can only be chained into a conflist"
    )]
    NotAConflist,
    /// `plugins` is empty.
    #[error("has an empty \"plugins\" array, so there is no primary plugin to chain after")]
    NoPlugins,
    /// The conflist's version is one hawser-cni does not speak.
    #[error(
        "declares cniVersion {0}; hawser-cni speaks 1.0.0 and 1.1.0 (upgrade the primary CNI's configuration)"
    )]
    Version(String),
}

/// Byte range of one JSON value in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// Where the `plugins` array and its elements are.
#[derive(Debug)]
struct PluginsArray {
    elements: Vec<Span>,
}

struct Scanner<'a> {
    b: &'a [u8],
}

impl Scanner<'_> {
    fn ws(&self, mut i: usize) -> usize {
        while i < self.b.len() && matches!(self.b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    fn string_end(&self, mut i: usize) -> Option<usize> {
        // b[i] == '"'
        i += 1;
        while i < self.b.len() {
            match self.b[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }

    fn value_end(&self, i: usize) -> Option<usize> {
        match *self.b.get(i)? {
            b'"' => self.string_end(i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                while j < self.b.len() {
                    match self.b[j] {
                        b'"' => {
                            j = self.string_end(j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                None
            }
            _ => {
                let mut j = i;
                while j < self.b.len()
                    && !matches!(self.b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    j += 1;
                }
                Some(j)
            }
        }
    }

    /// Elements of the array whose `[` is at `i`.
    fn array_elements(&self, i: usize) -> Option<Vec<Span>> {
        let mut out = Vec::new();
        let mut j = self.ws(i + 1);
        if self.b.get(j) == Some(&b']') {
            return Some(out);
        }
        loop {
            let end = self.value_end(j)?;
            out.push(Span { start: j, end });
            j = self.ws(end);
            match self.b.get(j)? {
                b',' => j = self.ws(j + 1),
                b']' => return Some(out),
                _ => return None,
            }
        }
    }

    /// The top-level `plugins` array.
    fn plugins(&self) -> Option<Option<PluginsArray>> {
        let mut j = self.ws(0);
        if self.b.get(j) != Some(&b'{') {
            return None;
        }
        j = self.ws(j + 1);
        if self.b.get(j) == Some(&b'}') {
            return Some(None);
        }
        loop {
            let key_end = self.string_end(j)?;
            let key: String = serde_json::from_slice(&self.b[j..key_end]).ok()?;
            j = self.ws(key_end);
            if self.b.get(j) != Some(&b':') {
                return None;
            }
            let vstart = self.ws(j + 1);
            let vend = self.value_end(vstart)?;
            if key == "plugins" && self.b.get(vstart) == Some(&b'[') {
                return Some(Some(PluginsArray {
                    elements: self.array_elements(vstart)?,
                }));
            }
            j = self.ws(vend);
            match self.b.get(j)? {
                b',' => j = self.ws(j + 1),
                b'}' => return Some(None),
                _ => return None,
            }
        }
    }
}

fn locate(text: &str) -> Result<(Value, PluginsArray), ConflistError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ConflistError::Json(e.to_string()))?;
    let scanner = Scanner { b: text.as_bytes() };
    let plugins = scanner
        .plugins()
        .ok_or_else(|| ConflistError::Json("unexpected structure".into()))?
        .ok_or(ConflistError::NotAConflist)?;
    Ok((doc, plugins))
}

fn is_ours(text: &str, span: Span) -> bool {
    serde_json::from_str::<Value>(&text[span.start..span.end])
        .ok()
        .and_then(|v| {
            v.get("type")
                .and_then(Value::as_str)
                .map(|t| t == PLUGIN_TYPE)
        })
        .unwrap_or(false)
}

/// Checks the conflist speaks a version hawser-cni supports.
fn check_version(doc: &Value) -> Result<(), ConflistError> {
    let single = doc.get("cniVersion").and_then(Value::as_str);
    let many: Vec<&str> = doc
        .get("cniVersions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let ok = single.is_some_and(|v| SUPPORTED_VERSIONS.contains(&v))
        || many.iter().any(|v| SUPPORTED_VERSIONS.contains(v));
    if ok {
        Ok(())
    } else {
        Err(ConflistError::Version(match (single, many.is_empty()) {
            (_, false) => format!("{many:?}"),
            (Some(v), true) => format!("{v:?}"),
            (None, true) => "(none)".into(),
        }))
    }
}

/// Removes one element, with the separator that precedes it (or follows it,
/// for the first element).
fn cut(text: &str, elements: &[Span], k: usize) -> String {
    let (from, to) = if k > 0 {
        (elements[k - 1].end, elements[k].end)
    } else if let Some(next) = elements.get(1) {
        (elements[0].start, next.start)
    } else {
        (elements[0].start, elements[0].end)
    };
    format!("{}{}", &text[..from], &text[to..])
}

/// Removes every hawser-cni entry. `None`: there was none.
pub fn remove_entry(text: &str) -> Result<Option<String>, ConflistError> {
    let mut current = text.to_string();
    let mut changed = false;
    loop {
        let (_, plugins) = locate(&current)?;
        let Some(k) = plugins.elements.iter().position(|s| is_ours(&current, *s)) else {
            break;
        };
        current = cut(&current, &plugins.elements, k);
        changed = true;
    }
    Ok(changed.then_some(current))
}

/// Makes `entry` the last plugin, exactly once. `None`: already so.
pub fn ensure_entry(text: &str, entry: &[(&str, Value)]) -> Result<Option<String>, ConflistError> {
    let (doc, plugins) = locate(text)?;
    check_version(&doc)?;
    let desired: Value = Value::Object(
        entry
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    let ours: Vec<usize> = (0..plugins.elements.len())
        .filter(|k| is_ours(text, plugins.elements[*k]))
        .collect();
    if let [only] = ours.as_slice() {
        let span = plugins.elements[*only];
        let current: Value = serde_json::from_str(&text[span.start..span.end])
            .map_err(|e| ConflistError::Json(e.to_string()))?;
        if *only + 1 == plugins.elements.len() && current == desired {
            return Ok(None);
        }
    }
    let base = match remove_entry(text)? {
        Some(t) => t,
        None => text.to_string(),
    };
    let (_, plugins) = locate(&base)?;
    let last = *plugins.elements.last().ok_or(ConflistError::NoPlugins)?;
    // Reuse the layout of the last plugin: the whitespace before it.
    let lead_start = base[..last.start]
        .rfind(|c: char| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let lead = &base[lead_start..last.start];
    let rendered = match lead.rfind('\n') {
        Some(nl) => {
            let indent = &lead[nl + 1..];
            let unit = if indent.contains('\t') { "\t" } else { "  " };
            format!("{lead}{}", render(entry, Some((indent, unit))))
        }
        None => format!("{lead}{}", render(entry, None)),
    };
    Ok(Some(format!(
        "{},{}{}",
        &base[..last.end],
        rendered,
        &base[last.end..]
    )))
}

/// The entry as JSON text, keys in the given order; multi-line with the
/// given indentation, or compact.
fn render(entry: &[(&str, Value)], layout: Option<(&str, &str)>) -> String {
    let field = |(k, v): &(&str, Value)| format!("{}: {}", Value::String((*k).to_string()), v);
    match layout {
        None => format!(
            "{{{}}}",
            entry.iter().map(field).collect::<Vec<_>>().join(", ")
        ),
        Some((indent, unit)) => {
            let inner = entry
                .iter()
                .map(|f| format!("{indent}{unit}{}", field(f)))
                .collect::<Vec<_>>()
                .join(",\n");
            format!("{{\n{inner}\n{indent}}}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Vec<(&'static str, Value)> {
        vec![
            ("type", json!("hawser-cni")),
            ("socketPath", json!("/var/run/hawser/cni.sock")),
        ]
    }

    const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "ipam": { "type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]] }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
"#;

    #[test]
    fn appends_last_keeps_layout_and_uninstalls_byte_exact() {
        let installed = ensure_entry(PRIMARY, &entry()).unwrap().unwrap();
        let doc: Value = serde_json::from_str(&installed).unwrap();
        let types: Vec<&str> = doc["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "hawser-cni"]);
        assert!(
            installed.contains("    },\n    {\n      \"type\": \"hawser-cni\",\n"),
            "{installed}"
        );
        assert_eq!(
            ensure_entry(&installed, &entry()).unwrap(),
            None,
            "idempotent"
        );
        assert_eq!(remove_entry(&installed).unwrap().unwrap(), PRIMARY);
        assert_eq!(remove_entry(PRIMARY).unwrap(), None);
    }

    #[test]
    fn compact_files_stay_compact_and_stale_entries_move_last() {
        let compact = r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"hawser-cni","socketPath":"/old"},{"type":"ptp"}]}"#;
        let fixed = ensure_entry(compact, &entry()).unwrap().unwrap();
        assert_eq!(
            fixed,
            r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"ptp"},{"type": "hawser-cni", "socketPath": "/var/run/hawser/cni.sock"}]}"#
        );
        assert_eq!(
            remove_entry(&fixed).unwrap().unwrap(),
            r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"ptp"}]}"#
        );
    }

    #[test]
    fn refuses_what_it_cannot_chain_into() {
        assert_eq!(
            ensure_entry(
                r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                &entry()
            ),
            Err(ConflistError::NotAConflist)
        );
        assert_eq!(
            ensure_entry(
                r#"{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"bridge"}]}"#,
                &entry()
            ),
            Err(ConflistError::Version("\"0.4.0\"".into()))
        );
        assert!(ensure_entry(
            r#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.0.0"],"name":"n","plugins":[{"type":"bridge"}]}"#,
            &entry()
        )
        .is_ok());
        assert_eq!(
            ensure_entry(
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                &entry()
            ),
            Err(ConflistError::NoPlugins)
        );
        assert!(matches!(
            ensure_entry("{", &entry()),
            Err(ConflistError::Json(_))
        ));
        // Strings containing brackets and escaped quotes do not confuse the scanner.
        let tricky =
            r#"{"name":"a]\"[}","cniVersion":"1.0.0","plugins":[{"type":"bridge","x":"}]"}]}"#;
        let out = ensure_entry(tricky, &entry()).unwrap().unwrap();
        assert_eq!(remove_entry(&out).unwrap().unwrap(), tricky);
    }
}
