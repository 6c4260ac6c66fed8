//! What a request can ask the echo backend to do, read from its query string
//! (and one header), with the conventions upstream conformance relies on:
//!
//! | directive | effect | from |
//! |---|---|---|
//! | `delay=<duration>` | sleep before answering (`1s`, `500ms`) | Istio echo, echo-basic |
//! | `codes=<code>[:<weight>][,...]` | answer one of these statuses, picked by weight | Istio echo |
//! | `headers=<name>:<value>[,...]` | set these response headers | Istio echo |
//! | `X-Echo-Set-Header: <name>:<value>[,...]` (request header) | set these response headers | echo-basic |
//! | `responseCode=<code>` | fail with this status (every time, or the first `succeedAfter`) | echo-basic retry simulation |
//! | `close=true` | fail by closing the connection without a response | Hawser (retry on connection error) |
//! | `succeedAfter=<n>` | only the first `n` requests with the same key fail | echo-basic retry simulation |
//! | `delayRetry=<duration>` | sleep this long before each failure | echo-basic retry simulation |
//! | `uuid=<key>` | the key that `succeedAfter` counts by (default: the whole URL) | echo-basic retry simulation |
//!
//! Other query parameters are left alone (they belong to the test's URL).
//! A directive with a bad value is refused with a message naming it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rand::Rng;

use super::duration::{DurationError, parse_duration};

/// The request header echo-basic reads response headers to set from.
pub const SET_HEADER: &str = "x-echo-set-header";

/// Why a request's directives were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    /// A duration directive did not parse.
    #[error("{name}: {source}")]
    Duration {
        /// The directive.
        name: &'static str,
        /// Why.
        source: DurationError,
    },
    /// A status code is not a number in 100..=599.
    #[error("{name}: invalid status code {value:?} (expected a number from 100 to 599)")]
    Status {
        /// The directive.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// A weight in `codes=` is not a non-negative integer, or all are zero.
    #[error(
        "codes: invalid weight in {0:?} (expected code or code:weight with a whole weight, not all zero)"
    )]
    Weight(String),
    /// A `name:value` pair is malformed or not a valid header.
    #[error("{name}: invalid header {value:?} (expected name:value)")]
    Header {
        /// The directive.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// `succeedAfter` is not a whole number.
    #[error("succeedAfter: invalid count {0:?} (expected a whole number)")]
    Count(String),
    /// `close` is not a boolean.
    #[error("close: invalid value {0:?} (expected true or false)")]
    Close(String),
    /// `succeedAfter` without a failure to apply.
    #[error(
        "succeedAfter needs responseCode=<code> or close=true to say how the first requests fail"
    )]
    NothingToFail,
}

/// How a failing request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status.
    Status(StatusCode),
    /// Close the connection (HTTP/2: reset the stream) without answering.
    Close,
}

/// The failure simulation of a request (`responseCode`/`close`,
/// `succeedAfter`, `delayRetry`, `uuid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulation {
    /// How to fail.
    pub failure: Failure,
    /// Fail only the first this many requests with `key`; `None`: always.
    pub succeed_after: Option<u64>,
    /// Sleep before failing.
    pub delay: Duration,
    /// What `succeed_after` counts by.
    pub key: String,
}

/// Everything a request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// Sleep this long before answering.
    pub delay: Option<Duration>,
    /// Weighted status codes to pick the answer's status from.
    pub codes: Vec<(StatusCode, u32)>,
    /// Response headers to set.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The failure simulation, if any.
    pub simulation: Option<Simulation>,
}

impl Directives {
    /// Reads the directives of a request from its path-and-query and headers.
    pub fn from_request(path_and_query: &str, headers: &HeaderMap) -> Result<Self, DirectiveError> {
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let mut d = Directives::default();
        let mut response_code = None;
        let mut close = false;
        let mut succeed_after = None;
        let mut delay_retry = Duration::ZERO;
        let mut key = None;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "delay" => {
                    d.delay = Some(parse_duration(&value).map_err(|source| {
                        DirectiveError::Duration {
                            name: "delay",
                            source,
                        }
                    })?);
                }
                "codes" => d.codes = parse_codes(&value)?,
                "headers" => d.headers.extend(parse_header_list("headers", &value)?),
                "responseCode" => response_code = Some(parse_status("responseCode", &value)?),
                "close" => {
                    close = match value.as_ref() {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        other => return Err(DirectiveError::Close(other.to_owned())),
                    }
                }
                "succeedAfter" => {
                    succeed_after = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| DirectiveError::Count(value.to_string()))?,
                    );
                }
                "delayRetry" => {
                    delay_retry =
                        parse_duration(&value).map_err(|source| DirectiveError::Duration {
                            name: "delayRetry",
                            source,
                        })?;
                }
                "uuid" => key = Some(value.into_owned()),
                _ => {}
            }
        }
        for value in headers.get_all(SET_HEADER) {
            let text = value.to_str().map_err(|_| DirectiveError::Header {
                name: "X-Echo-Set-Header",
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })?;
            d.headers
                .extend(parse_header_list("X-Echo-Set-Header", text)?);
        }
        let failure = if close {
            Some(Failure::Close)
        } else {
            response_code.map(Failure::Status)
        };
        d.simulation = match (failure, succeed_after) {
            (Some(failure), succeed_after) => Some(Simulation {
                failure,
                succeed_after,
                delay: delay_retry,
                key: key.unwrap_or_else(|| path_and_query.to_owned()),
            }),
            (None, Some(_)) => return Err(DirectiveError::NothingToFail),
            (None, None) => None,
        };
        Ok(d)
    }

    /// Picks the answer's status from `codes` (200 when none were given).
    pub fn pick_status(&self) -> StatusCode {
        let total: u64 = self.codes.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return StatusCode::OK;
        }
        let mut slice = rand::rng().random_range(0..total);
        for (code, weight) in &self.codes {
            let weight = u64::from(*weight);
            if slice < weight {
                return *code;
            }
            slice -= weight;
        }
        StatusCode::OK
    }
}

fn parse_status(name: &'static str, value: &str) -> Result<StatusCode, DirectiveError> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| DirectiveError::Status {
            name,
            value: value.to_owned(),
        })
}

/// `code[:weight][,code[:weight]]*`; weight defaults to 1.
fn parse_codes(value: &str) -> Result<Vec<(StatusCode, u32)>, DirectiveError> {
    let mut codes = Vec::new();
    for item in value.split(',') {
        let (code, weight) = item.split_once(':').unwrap_or((item, "1"));
        let code = parse_status("codes", code)?;
        let weight = weight
            .trim()
            .parse::<u32>()
            .map_err(|_| DirectiveError::Weight(item.to_owned()))?;
        codes.push((code, weight));
    }
    if codes.iter().all(|(_, w)| *w == 0) {
        return Err(DirectiveError::Weight(value.to_owned()));
    }
    Ok(codes)
}

/// `name:value[,name:value]*`.
fn parse_header_list(
    name: &'static str,
    value: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, DirectiveError> {
    let bad = |item: &str| DirectiveError::Header {
        name,
        value: item.to_owned(),
    };
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (n, v) = item.trim().split_once(':').ok_or_else(|| bad(item))?;
            let n = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| bad(item))?;
            let v = HeaderValue::from_str(v.trim()).map_err(|_| bad(item))?;
            Ok((n, v))
        })
        .collect()
}

/// Counts requests per simulation key, so `succeedAfter=n` fails exactly the
/// first `n` requests of a key. Bounded: past [`Attempts::MAX_KEYS`] keys
/// the table starts over (a key then counts from zero again).
#[derive(Debug, Default)]
pub struct Attempts {
    seen: Mutex<HashMap<String, u64>>,
}

impl Attempts {
    /// How many keys are remembered at most.
    pub const MAX_KEYS: usize = 100_000;

    /// Records one request under `key`, returning how many came before it.
    pub fn record(&self, key: &str) -> u64 {
        // A poisoned lock only means another request panicked mid-update of a
        // counter; the counts are still usable.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= Self::MAX_KEYS && !seen.contains_key(key) {
            seen.clear();
        }
        let count = seen.entry(key.to_owned()).or_insert(0);
        let before = *count;
        *count += 1;
        before
    }

    /// Whether this request fails under `sim` (and records it).
    pub fn should_fail(&self, sim: &Simulation) -> bool {
        match sim.succeed_after {
            None => true,
            Some(n) => self.record(&sim.key) < n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pq: &str) -> Result<Directives, DirectiveError> {
        Directives::from_request(pq, &HeaderMap::new())
    }

    #[test]
    fn reads_conventions() {
        let d = parse("/x?delay=250ms&codes=503&headers=X-A:1,X-B:2&animal=whale").unwrap();
        assert_eq!(d.delay, Some(Duration::from_millis(250)));
        assert_eq!(d.pick_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(d.headers.len(), 2);
        assert_eq!(d.simulation, None);

        let d = parse("/retry?responseCode=500&succeedAfter=2&uuid=k1&delayRetry=1s").unwrap();
        assert_eq!(
            d.simulation,
            Some(Simulation {
                failure: Failure::Status(StatusCode::INTERNAL_SERVER_ERROR),
                succeed_after: Some(2),
                delay: Duration::from_secs(1),
                key: "k1".into(),
            })
        );
        let d = parse("/c?close=true&succeedAfter=1").unwrap();
        let sim = d.simulation.unwrap();
        assert_eq!(sim.failure, Failure::Close);
        assert_eq!(sim.key, "/c?close=true&succeedAfter=1");
    }

    #[test]
    fn refuses_bad_values_naming_the_directive() {
        let e = parse("/?delay=soon").unwrap_err().to_string();
        assert!(e.starts_with("delay:") && e.contains("soon"), "{e}");
        let e = parse("/?codes=700").unwrap_err().to_string();
        assert!(e.contains("codes") && e.contains("700"), "{e}");
        assert_eq!(
            parse("/?codes=500:x"),
            Err(DirectiveError::Weight("500:x".into()))
        );
        assert!(matches!(
            parse("/?headers=nocolon"),
            Err(DirectiveError::Header { .. })
        ));
        assert_eq!(
            parse("/?succeedAfter=2"),
            Err(DirectiveError::NothingToFail)
        );
        assert_eq!(
            parse("/?responseCode=500&succeedAfter=-1"),
            Err(DirectiveError::Count("-1".into()))
        );
        assert_eq!(
            parse("/?close=maybe"),
            Err(DirectiveError::Close("maybe".into()))
        );
    }

    #[test]
    fn weighted_codes_respect_weights() {
        let d = parse("/?codes=500:1,200:0").unwrap();
        for _ in 0..50 {
            assert_eq!(d.pick_status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        let d = parse("/?codes=500:1,200:1").unwrap();
        let fives = (0..2000)
            .filter(|_| d.pick_status() == StatusCode::INTERNAL_SERVER_ERROR)
            .count();
        assert!((800..1200).contains(&fives), "{fives}");
    }

    #[test]
    fn attempts_fail_first_n_per_key() {
        let attempts = Attempts::default();
        let sim = |key: &str| Simulation {
            failure: Failure::Close,
            succeed_after: Some(2),
            delay: Duration::ZERO,
            key: key.into(),
        };
        assert!(attempts.should_fail(&sim("a")));
        assert!(attempts.should_fail(&sim("a")));
        assert!(attempts.should_fail(&sim("b")));
        assert!(!attempts.should_fail(&sim("a")));
        assert!(attempts.should_fail(&sim("b")));
        assert!(!attempts.should_fail(&sim("b")));
    }
}
