//! `hawser cert inspect` run as a user would.

use std::process::Command;

use hawser_api::SpiffeId;
use hawser_api::testing::TestPki;
use hawser_api::tls::TrustBundle;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(args)
        .output()
        .expect("run hawser");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `leaf.pem` in `dir`: a leaf of `pki` for `default/web`, with its chain.
fn write_leaf(pki: &TestPki, dir: &std::path::Path) -> std::path::PathBuf {
    let web = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").expect("id");
    let leaf = dir.join("leaf.pem");
    let pem = TrustBundle::from_der(pki.leaf(&web).chain().to_vec())
        .expect("chain")
        .to_pem();
    std::fs::write(&leaf, pem).expect("write leaf");
    leaf
}

#[test]
fn inspect_verifies_and_explains_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("cluster.local");
    let leaf = write_leaf(&pki, dir.path());
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, pki.bundle().to_pem()).unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, TestPki::new("cluster.local").bundle().to_pem()).unwrap();
    let (leaf, bundle, other) = (
        leaf.to_str().unwrap(),
        bundle.to_str().unwrap(),
        other.to_str().unwrap(),
    );

    let (code, out) = run(&["cert", "inspect", leaf, "--bundle", bundle]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("verified:     yes, as spiffe://cluster.local/ns/default/sa/web"),
        "{out}"
    );

    let (code, out) = run(&["cert", "inspect", leaf, "--bundle", other]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NO: certificate is not issued by any root"),
        "{out}"
    );

    let (code, out) = run(&[
        "cert",
        "inspect",
        leaf,
        "--bundle",
        bundle,
        "--expect",
        "spiffe://cluster.local/ns/default/sa/api",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("expected spiffe://cluster.local/ns/default/sa/api"),
        "{out}"
    );

    let (code, out) = run(&["cert", "inspect", "/nonexistent.pem"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("reading /nonexistent.pem"), "{out}");
}

/// A reader that closed its end of the pipe (`hawser … | head -1`) ends the
/// command quietly: exit 141 (what a shell reports for SIGPIPE; never 0, so
/// a failed check is not taken for a pass), nothing on stderr, no panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("cluster.local");
    let leaf = write_leaf(&pki, dir.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(["cert", "inspect", leaf.to_str().unwrap()])
        .stdout(writer)
        .output()
        .expect("run hawser");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert_eq!(stderr, "");
}
