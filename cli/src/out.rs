//! Standard output that a reader may close: `hawser lab status | head -1`
//! ends quietly instead of panicking on the closed pipe.

use std::fmt;
use std::io::{self, Write as _};

/// Standard output was closed by its reader (a closed pipe): the command
/// stops writing and exits 141 (as if SIGPIPE had ended it), quietly.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes `args` to standard output. A closed pipe is [`StdoutClosed`];
/// other write errors are returned as they are.
pub fn write(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
        Ok(()) => Ok(()),
    }
}

/// `print!` that returns a closed standard output as an error (`?` it).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}

/// `println!` that returns a closed standard output as an error (`?` it).
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
