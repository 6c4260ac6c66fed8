//! Go-style durations (`500ms`, `1m30s`, `1.5s`): the one parser of
//! `hawser_api::duration`, which the echo backend's `?delay=` and the
//! binaries' flags share.

pub use hawser_api::duration::{DurationError, format_duration, parse_duration};
