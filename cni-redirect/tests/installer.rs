//! `hawser-cni install` / `uninstall` on temporary directories.

#![allow(clippy::unwrap_used)] // test helpers, like #[test] bodies, may unwrap

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_hawser-cni");

const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.244.1.0/24" }]]
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
"#;

const OTHER: &str = r#"{"cniVersion":"1.0.0","name":"zz-other","plugins":[{"type":"ptp"}]}"#;

struct Dirs {
    _tmp: tempfile::TempDir,
    bin: std::path::PathBuf,
    conf: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let conf = tmp.path().join("net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-bridge.conflist"), PRIMARY).unwrap();
    std::fs::write(conf.join("99-other.conflist"), OTHER).unwrap();
    Dirs {
        _tmp: tmp,
        bin,
        conf,
    }
}

fn hawser(args: &[&str], d: &Dirs) -> Output {
    Command::new(PLUGIN)
        .args(args)
        .arg("--cni-bin-dir")
        .arg(&d.bin)
        .arg("--cni-conf-dir")
        .arg(&d.conf)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn plugin_types(path: &Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn install_chains_last_is_idempotent_and_uninstall_is_byte_exact() {
    let d = dirs();
    let primary = d.conf.join("10-bridge.conflist");
    ok(hawser(
        &["install", "--socket-path", "/run/hawser/cni.sock"],
        &d,
    ));

    assert_eq!(plugin_types(&primary), ["bridge", "portmap", "hawser-cni"]);
    let v: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
    let entry = &v["plugins"][2];
    assert_eq!(entry["socketPath"], "/run/hawser/cni.sock");
    assert_eq!(entry["runDir"], "/var/run/hawser");
    // Everything else is kept.
    assert_eq!(
        v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.1.0/24"
    );
    assert_eq!(
        std::fs::read_to_string(d.conf.join("99-other.conflist")).unwrap(),
        OTHER
    );
    // The binary is in place and runnable.
    let installed = d.bin.join("hawser-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(PLUGIN).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // No temp files left in the config dir.
    let names: Vec<String> = std::fs::read_dir(&d.conf)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Again: nothing changes, not even the mtime.
    let bytes = std::fs::read(&primary).unwrap();
    let mtime = std::fs::metadata(&primary).unwrap().modified().unwrap();
    let bin_mtime = std::fs::metadata(&installed).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    ok(hawser(
        &["install", "--socket-path", "/run/hawser/cni.sock"],
        &d,
    ));
    assert_eq!(std::fs::read(&primary).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&primary).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().modified().unwrap(),
        bin_mtime
    );

    // Changed settings update the entry in place (still last, still once).
    ok(hawser(&["install", "--socket-path", "/other/cni.sock"], &d));
    assert_eq!(plugin_types(&primary), ["bridge", "portmap", "hawser-cni"]);

    ok(hawser(&["uninstall"], &d));
    assert_eq!(std::fs::read_to_string(&primary).unwrap(), PRIMARY);
    assert!(!installed.exists());
    ok(hawser(&["uninstall"], &d));
    assert_eq!(std::fs::read_to_string(&primary).unwrap(), PRIMARY);
}

#[test]
fn watch_reinserts_after_the_primary_rewrites_its_config() {
    let d = dirs();
    let primary = d.conf.join("10-bridge.conflist");
    let mut child = Command::new(PLUGIN)
        .args([
            "install",
            "--watch",
            "--interval-secs",
            "1",
            "--uninstall-on-exit",
        ])
        .arg("--cni-bin-dir")
        .arg(&d.bin)
        .arg("--cni-conf-dir")
        .arg(&d.conf)
        .spawn()
        .unwrap();
    let wait_for = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if plugin_types(&primary) == want {
                return;
            }
            assert!(Instant::now() < deadline, "conflist never became {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&["bridge", "portmap", "hawser-cni"]);
    // The primary CNI rewrites its config without us.
    std::fs::write(&primary, PRIMARY).unwrap();
    wait_for(&["bridge", "portmap", "hawser-cni"]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&primary).unwrap(), PRIMARY);
    assert!(!d.bin.join("hawser-cni").exists());
}

#[test]
fn refuses_configs_it_cannot_chain_into() {
    let d = dirs();
    std::fs::remove_file(d.conf.join("10-bridge.conflist")).unwrap();
    std::fs::remove_file(d.conf.join("99-other.conflist")).unwrap();
    let out = hawser(&["install"], &d);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CNI configuration"));

    let single = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;
    std::fs::write(d.conf.join("10-single.conf"), single).unwrap();
    let out = hawser(&["install"], &d);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("10-single.conf") && err.contains("conflist"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.conf.join("10-single.conf")).unwrap(),
        single
    );

    let old = r#"{"cniVersion":"0.3.1","name":"n","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(d.conf.join("05-old.conflist"), old).unwrap();
    let out = hawser(&["install"], &d);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0.3.1"));
    assert_eq!(
        std::fs::read_to_string(d.conf.join("05-old.conflist")).unwrap(),
        old
    );
}
