//! Running the system tools the lab is built from (`ip`, the CNI plugins,
//! processes inside network namespaces), with errors that say which command
//! failed and what it printed.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::LabError;

/// Runs `program args…`, returning its stdout; a non-zero exit is an error
/// carrying the command line and its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with(Command::new(program).args(args), None)
}

/// Runs `cmd` with `stdin` fed in, returning stdout.
pub fn run_with(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<String, LabError> {
    let line = format!("{cmd:?}").replace('"', "");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        command: line.clone(),
        output: e.to_string(),
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A plugin that exits without reading its stdin closes the pipe: its
        // exit status tells what went wrong, not this write.
        let _ = pipe.write_all(data);
    }
    let out = child.wait_with_output().map_err(|e| LabError::Command {
        command: line.clone(),
        output: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(LabError::Command {
            command: line,
            output: format!("{} {}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned(),
        });
    }
    Ok(stdout)
}

/// `ip args…`.
pub fn ip<I, S>(args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("ip", args)
}

/// Creates network namespace `name`.
pub fn netns_add(name: &str) -> Result<(), LabError> {
    ip(["netns", "add", name]).map(drop)
}

/// Deletes network namespace `name`; a namespace that is already gone is fine.
pub fn netns_del(name: &str) -> Result<(), LabError> {
    if !netns_exists(name) {
        return Ok(());
    }
    ip(["netns", "del", name]).map(drop)
}

/// Whether network namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Every network namespace whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Runs `program args…` inside network namespace `netns`, returning stdout.
pub fn netns_exec<I, S>(netns: &str, program: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with(
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args),
        None,
    )
}

/// Sets a per-namespace sysctl inside `netns` (never in the host namespace).
pub fn netns_sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    netns_exec(netns, "sysctl", ["-qw", &format!("{key}={value}")]).map(drop)
}

/// Whether process `pid` is alive.
pub fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root() -> Result<PathBuf, LabError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| LabError::io(Path::new("/proc/self/mounts"), e))?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(at))
        })
        .min_by_key(|p| p.components().count())
        .ok_or_else(|| {
            LabError::Missing(
                "a cgroup v2 hierarchy (the lab's kubelet stand-in is told apart by its cgroup)"
                    .into(),
            )
        })
}

/// How many files process `pid` has open (`/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Stops process `pid` and everything in its process group (the lab starts
/// each process as a group leader, so a shell's children go with it):
/// SIGTERM, then SIGKILL if the leader is still alive after `grace`; any
/// member left after the leader exits is killed too.
pub fn stop(pid: u32, grace: std::time::Duration) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid_t = Pid::from_raw(raw);
    let group = |signal| {
        // Not a group leader (or the group is gone): signal the process alone.
        if killpg(pid_t, signal).is_err() {
            let _ = kill(pid_t, signal);
        }
    };
    group(Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    group(Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`, so
/// sockets it creates live there; the calling thread is never moved.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).map_err(|e| LabError::Io {
        path: path.clone(),
        source: e,
    })?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LabError::Command {
                command: format!("setns {}", path.display()),
                output: e.to_string(),
            })
            .map(|()| f())
    })
    .join()
    .map_err(|_| LabError::Command {
        command: format!("thread in netns {netns}"),
        output: "panicked".into(),
    })?
}
