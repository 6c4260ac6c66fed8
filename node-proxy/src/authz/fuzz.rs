//! [`normalize`] (and [`normalize_path`], its default) against a reference
//! written from its docs and the RFCs it cites, independently of it, under
//! every [`PathNormalization`]:
//! 1. `%00` in the path as sent: refused;
//! 2. percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2),
//!    every other escape kept as sent;
//! 3. escaped slashes (`%2F`, `%5C`, either case) in the path as sent: kept,
//!    refused, or decoded ([`EscapedSlashes`]);
//! 4. `\` read as `/`;
//! 5. a dot segment with `;` parameters (`..;`, `.;x`): refused;
//! 6. dot segments removed with RFC 3986 §5.2.4's own buffer algorithm;
//! 7. with merging, runs of `/` made one, after the dot segments, as Envoy
//!    orders `normalize_path` and `merge_slashes`;
//! 8. an empty result is `/`; a result equal to the path is unchanged.
//!
//! The domain is what `http::Uri::path` gives for a request: a path that
//! starts with `/`, or the empty path. A second property holds for any
//! string and states what normalization is for: what the policy judges
//! (and the app is then sent) is normal already, and one more decoding of
//! unreserved escapes (the app's) finds no dot segment, no `%00`, and, where
//! escaped slashes are refused or decoded, no escaped slash.
//!
//! Runs `HAWSER_FUZZ_CASES` cases (see `crate::http::fuzz`).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::{EscapedSlashes, Normalized, PathNormalization, normalize, normalize_path};

/// RFC 3986 §6.2.2.2: `%XX` of an unreserved character (ALPHA, DIGIT,
/// `-._~`) is that character; any other byte, or escape, stays.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let &[b'%', high, low, ..] = &bytes[i..]
            && let (Some(high), Some(low)) = (hex(high), hex(low))
        {
            let decoded = high * 16 + low;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                out.push(decoded);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Three ASCII bytes were replaced by one: still UTF-8.
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

/// `%2F` is `/` and `%5C` is `\` (either case); every other byte stays.
fn decode_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i..i + 3) {
            Some(escape) if escape.eq_ignore_ascii_case(b"%2f") => {
                out.push(b'/');
                i += 3;
            }
            Some(escape) if escape.eq_ignore_ascii_case(b"%5c") => {
                out.push(b'\\');
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Whether `path` holds `escape` (`%XX`), in either case.
fn has_escape(path: &str, escape: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(escape.as_bytes()))
}

/// RFC 3986 §5.2.4, step by step (rules A to E on an input buffer).
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            // A
            input = rest.to_owned();
        } else if input.starts_with("/./") || input == "/." {
            // B: the prefix becomes "/".
            input = format!("/{}", &input[input.len().min(3)..]);
        } else if input.starts_with("/../") || input == "/.." {
            // C: the prefix becomes "/", and the last output segment goes.
            input = format!("/{}", &input[input.len().min(4)..]);
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        } else if input == "." || input == ".." {
            // D
            input.clear();
        } else {
            // E: the first segment, with its leading "/", moves to the output.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| start + i);
            output.push_str(&input[..end]);
            input = input[end..].to_owned();
        }
    }
    output
}

/// A normalization's outcome, without the reason of a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Unchanged,
    Changed(String),
    Rejected,
}

impl From<Normalized> for Outcome {
    fn from(normalized: Normalized) -> Self {
        match normalized {
            Normalized::Unchanged => Self::Unchanged,
            Normalized::Changed(path) => Self::Changed(path),
            Normalized::Rejected(_) => Self::Rejected,
        }
    }
}

/// What [`normalize`] should give for a request's `path` (module docs).
fn reference(path: &str, how: &PathNormalization) -> Outcome {
    // Decoded until nothing changes (an escape that decoding makes is
    // decoded too).
    let mut decoded = path.to_owned();
    loop {
        let again = decode_unreserved(&decoded);
        if again == decoded {
            break;
        }
        decoded = again;
    }
    if has_escape(&decoded, "%00") {
        return Outcome::Rejected;
    }
    if has_escape(&decoded, "%2f") || has_escape(&decoded, "%5c") {
        match how.escaped_slashes {
            EscapedSlashes::Keep => {}
            EscapedSlashes::Reject => return Outcome::Rejected,
            EscapedSlashes::DecodeAndMerge => decoded = decode_slashes(&decoded),
        }
    }
    let decoded = decoded.replace('\\', "/");
    // A dot segment with parameters, `;` as sent or escaped (`%3B`).
    let dotted = |segment: &str| {
        let segment = segment.replace("%3b", ";").replace("%3B", ";");
        segment.contains(';') && matches!(segment.split(';').next(), Some("." | ".."))
    };
    if decoded.split('/').any(dotted) {
        return Outcome::Rejected;
    }
    let mut normalized = remove_dot_segments(&decoded);
    if how.merge_slashes || how.escaped_slashes == EscapedSlashes::DecodeAndMerge {
        while normalized.contains("//") {
            normalized = normalized.replace("//", "/");
        }
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    if normalized == path {
        Outcome::Unchanged
    } else {
        Outcome::Changed(normalized)
    }
}

/// Path segments: names, dot segments plain, escaped and with parameters,
/// escapes of unreserved and reserved characters, escaped slashes and NUL,
/// `%25`-escaped escapes, broken escapes, escapes that decoding makes
/// (`%%32e`, `%2%65`: a `%` before the escape of a hex digit), a `%` whose
/// next two bytes end inside a non-ASCII character, backslashes, non-ASCII.
const SEGMENTS: &[&str] = &[
    "a",
    "admin",
    "api",
    "",
    "",
    ".",
    "..",
    "...",
    "..;",
    ".;x",
    "..;jsessionid=1",
    "a;b",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2E.",
    "%2e%2e%3b",
    "%61dmin",
    "%7E",
    "%2f",
    "%2F",
    "..%2F..",
    "%5c",
    "%5C",
    "%00",
    "%25",
    "%252e",
    "%",
    "%2",
    "%zz",
    "%+1",
    "%%32e",
    "%2%65",
    "%%32e%%32e",
    "%%32f",
    "%%300",
    "%\u{20ac}",
    "%a\u{e9}",
    "caf\u{e9}",
    "%C3%A9",
    "\\",
    "\\..",
    "a\\..\\b",
];

/// A request path, made of segments or of the characters that matter.
fn request_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (vec(select(SEGMENTS), 0..8), any::<bool>()).prop_map(|(segments, trailing)| {
            let mut path: String = segments.iter().flat_map(|&s| ["/", s]).collect();
            if trailing || path.is_empty() {
                path.push('/');
            }
            path
        }),
        1 => "/[a-zA-Z0-9%./~_;\\\\-]{0,24}",
        1 => "(/[.%2eE;]{0,4}){0,6}",
    ]
}

/// Any string at all (relative paths, `*`, controls, non-ASCII).
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => request_path(),
        1 => "[a-z./%2eE*;\\\\]{0,16}",
        1 => "\\PC{0,24}",
    ]
}

const ESCAPED_SLASHES: &[EscapedSlashes] = &[
    EscapedSlashes::Keep,
    EscapedSlashes::Reject,
    EscapedSlashes::DecodeAndMerge,
];

/// The settings that merge no slashes.
const KEEP_OR_REJECT: &[EscapedSlashes] = &[EscapedSlashes::Keep, EscapedSlashes::Reject];

/// The settings that merge slashes.
fn merging() -> impl Strategy<Value = PathNormalization> {
    prop_oneof![
        select(ESCAPED_SLASHES).prop_map(|escaped_slashes| PathNormalization {
            merge_slashes: true,
            escaped_slashes,
        }),
        Just(PathNormalization {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::DecodeAndMerge,
        }),
    ]
}

/// Any setting.
fn how() -> impl Strategy<Value = PathNormalization> {
    (any::<bool>(), select(ESCAPED_SLASHES)).prop_map(|(merge_slashes, escaped_slashes)| {
        PathNormalization {
            merge_slashes,
            escaped_slashes,
        }
    })
}

/// The path the policy judges (and the app is sent): `None` if refused.
fn judged(path: &str, how: &PathNormalization) -> Option<String> {
    match normalize(path, how) {
        Normalized::Unchanged => Some(path.to_owned()),
        Normalized::Changed(path) => Some(path),
        Normalized::Rejected(_) => None,
    }
}

/// Whether a path still holds what normalization removes, were it decoded
/// once more; `Some(what)` if so.
fn abnormal(path: &str, how: &PathNormalization) -> Option<&'static str> {
    let decoded = decode_unreserved(path).replace('\\', "/");
    if decoded
        .split('/')
        .any(|segment| matches!(segment.split(';').next(), Some("." | "..")))
    {
        return Some("a dot segment");
    }
    if has_escape(path, "%00") || has_escape(&decoded, "%00") {
        return Some("an escaped NUL");
    }
    let slashes = |p: &str| has_escape(p, "%2f") || has_escape(p, "%5c");
    if how.escaped_slashes != EscapedSlashes::Keep && (slashes(path) || slashes(&decoded)) {
        return Some("an escaped slash");
    }
    let merges = how.merge_slashes || how.escaped_slashes == EscapedSlashes::DecodeAndMerge;
    if merges && path.contains("//") {
        return Some("`//`");
    }
    None
}

proptest! {
    #![proptest_config(crate::http::fuzz::config())]

    /// Request paths normalize as the docs and the RFCs say, under the
    /// settings that merge no slashes; `normalize_path` is the default's.
    #[test]
    fn request_paths_normalize_as_documented(
        path in request_path(),
        escaped_slashes in select(KEEP_OR_REJECT),
    ) {
        let how = PathNormalization { merge_slashes: false, escaped_slashes };
        let got = Outcome::from(normalize(&path, &how));
        prop_assert_eq!(&got, &reference(&path, &how), "{:?} under {:?}", path, how);
        if how == PathNormalization::default() {
            let expected = match got {
                Outcome::Changed(path) => Some(path),
                Outcome::Unchanged | Outcome::Rejected => None,
            };
            prop_assert_eq!(normalize_path(&path), expected, "{:?}", path);
        }
    }

    /// The same under the settings that merge slashes (apart, so that a
    /// divergence in the order of merging and dot segments, see
    /// `slashes_merge_after_dot_segments_are_removed`, hides nothing else).
    #[test]
    fn request_paths_normalize_as_documented_merging_slashes(
        path in request_path(),
        how in merging(),
    ) {
        let got = Outcome::from(normalize(&path, &how));
        prop_assert_eq!(&got, &reference(&path, &how), "{:?} under {:?}", path, how);
    }

    /// Any string: what is judged is normal already, and decoding it once
    /// more (as the app may) finds nothing normalization removes.
    #[test]
    fn judged_paths_are_normal_and_stay_so_decoded_once_more(path in any_path(), how in how()) {
        let Some(judged) = judged(&path, &how) else {
            return Ok(());
        };
        prop_assert_eq!(
            Outcome::from(normalize(&judged, &how)),
            Outcome::Unchanged,
            "{:?} is judged as {:?} under {:?}",
            path,
            judged,
            how
        );
        if let Some(what) = abnormal(&judged, &how) {
            return Err(TestCaseError::fail(format!(
                "{path:?} is judged as {judged:?} under {how:?}: {what} once decoded"
            )));
        }
    }
}

#[test]
fn the_reference_is_rfc_3986() {
    // RFC 3986 §5.2.4's own examples.
    assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
    assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
    let default = PathNormalization::default();
    assert_eq!(
        reference("/%2E%2e/a/%7e", &default),
        Outcome::Changed("/a/~".into())
    );
    assert_eq!(reference("", &default), Outcome::Changed("/".into()));
    assert_eq!(reference("/a/b", &default), Outcome::Unchanged);
}

/// What a request target can make `Uri::path` give besides a path that
/// starts with `/`: `*` (`OPTIONS *`) is left as it is, so it matches no
/// path rule, not even the prefix `/` (an Allow of `/*` does not allow it,
/// a Deny of `/*` does not deny it); the empty path (authority form) is `/`.
#[test]
fn the_paths_that_do_not_start_with_a_slash() {
    assert_eq!(normalize_path("*"), None);
    assert_eq!(normalize_path("").as_deref(), Some("/"));
}

/// Decoding `%%32e` (a `%`, then `%32`, the escape of `2`) makes `%2e`, and
/// `%%300` makes `%00`, `%%32f` makes `%2f`: escapes the checks were made
/// on the path as sent never saw. The inbound side forwards the judged
/// path, so `/x/%%32e%%32e/admin` is authorized as `/x/%2e%2e/admin`
/// (under `/x`, not `/admin`) and an app that decodes and resolves dot
/// segments serves `/admin`; `/admin%%32fx` passes `EscapedSlashes::Reject`
/// as `/admin%2fx`.
///
/// Fails today (`normalize` decodes once and checks the path as sent);
/// decoding until nothing changes, or refusing a path whose decoding makes
/// an escape, fixes it.
#[test]
fn escapes_made_by_decoding_do_not_hide_what_normalization_removes() {
    let reject = PathNormalization {
        escaped_slashes: EscapedSlashes::Reject,
        ..PathNormalization::default()
    };
    for (path, how) in [
        ("/x/%%32e%%32e/admin", PathNormalization::default()),
        ("/x/%2%65%2%65/admin", PathNormalization::default()),
        ("/x/%%300", PathNormalization::default()),
        ("/admin%%32fx", reject),
    ] {
        if let Some(judged) = judged(path, &how) {
            let what = abnormal(&judged, &how);
            assert_eq!(what, None, "{path:?} is judged as {judged:?} under {how:?}");
        }
    }
}

/// `DecodeAndMerge` decodes every escaped slash, also after a `%` that
/// precedes a non-ASCII character.
///
/// Fails today: `decode_escaped_slashes` copies the rest of the path as it
/// is when the two bytes after a `%` end inside a character
/// (`rest.get(i..i + 3)` is `None`), so `/public/%€/..%2F..%2Fadmin` is
/// judged, unchanged, under `/public`, and an app that decodes `%2F` serves
/// `/admin`.
#[test]
fn decode_and_merge_decodes_every_escaped_slash() {
    let how = PathNormalization {
        escaped_slashes: EscapedSlashes::DecodeAndMerge,
        ..PathNormalization::default()
    };
    let path = "/public/%\u{20ac}/..%2F..%2Fadmin";
    let judged = judged(path, &how);
    assert!(
        judged
            .as_deref()
            .is_none_or(|judged| !has_escape(judged, "%2f")),
        "{path:?} is judged as {judged:?}"
    );
}

/// Envoy merges slashes after `normalize_path`: `/a//../b` is `/a/b` (the
/// `..` takes the empty segment), as RFC 3986 reads it.
///
/// Fails today: `normalize` drops empty segments while it removes dot
/// segments, so the `..` takes `a` and the path is `/b`. The app is sent
/// the judged path either way, so this routes differently from Istio rather
/// than letting a request past its policy.
#[test]
fn slashes_merge_after_dot_segments_are_removed() {
    let how = PathNormalization {
        merge_slashes: true,
        ..PathNormalization::default()
    };
    assert_eq!(
        Outcome::from(normalize("/a//../b", &how)),
        Outcome::Changed("/a/b".into())
    );
}
