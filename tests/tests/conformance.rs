//! The conformance runner against a real 2-node lab: MeshBasic (a client pod
//! reaches Service `echo`, no route involved) passes through the lab's
//! Service routing, and the same case with an expectation the lab cannot
//! meet fails with the reason naming expected and got. Runs as root (CI
//! does); fails, never skips, when it cannot set up.

use std::path::Path;
use std::time::Duration;

use hawser_tests::lab::conformance::{self, Options};
use hawser_tests::lab::{Lab, LabConfig};

/// Removes the lab even when an assertion fails.
use hawser_tests::lab::LabGuard as Guard;

/// A copy of the suite in `to` whose MeshBasic case expects a 418.
fn suite_expecting_418(from: &Path, to: &Path) {
    for entry in ["base-manifests.yaml", "mesh"] {
        let status = std::process::Command::new("cp")
            .args(["-r"])
            .arg(from.join(entry))
            .arg(to)
            .status()
            .expect("cp");
        assert!(status.success(), "copy {entry}");
    }
    let text = std::fs::read_to_string(from.join("expectations.json")).expect("expectations");
    let mut suite: serde_json::Value = serde_json::from_str(&text).expect("json");
    let basic = suite["tests"]
        .as_array_mut()
        .expect("tests")
        .iter_mut()
        .find(|t| t["shortName"] == "MeshBasic")
        .expect("MeshBasic");
    basic["cases"][0]["expect"]["statusCodes"] = serde_json::json!([418]);
    std::fs::write(
        to.join("expectations.json"),
        serde_json::to_string(&suite).expect("json"),
    )
    .expect("write expectations");
}

#[test]
fn mesh_basic_passes_in_the_lab_and_a_wrong_expectation_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("hc{}", std::process::id() % 10000);
    let cfg = LabConfig::new(&name, 2, dir.path().join("lab"));
    let mut guard = Guard(Some(Lab::up(cfg).expect("lab up")));
    let lab = guard.lab();
    let suite = conformance::default_dir().expect("the gamma suite is in the repository");

    let mut options = Options::new(&suite);
    options.tests = vec!["MeshBasic".into()];
    let mut lines = Vec::new();
    let report = conformance::run(lab, &options, &mut |l| lines.push(l.to_owned()))
        .expect("conformance run");
    assert_eq!(report.results.len(), 1, "{report:?}");
    let case = &report.results[0];
    assert_eq!(
        (case.test.as_str(), case.case.as_str()),
        ("MeshBasic", "GET http://echo")
    );
    assert!(case.passed, "{case:?}\n{}", lines.join("\n"));
    assert!(case.attempts >= 3, "3 passes in a row: {case:?}");
    // The base manifests were deleted afterwards: no pod is left.
    assert!(lab.state().pods.is_empty(), "{:?}", lab.state().pods);

    // The runner can fail: the same request, expecting a status it cannot get.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).expect("mkdir");
    suite_expecting_418(&suite, &wrong);
    let mut options = Options::new(&wrong);
    options.tests = vec!["MeshBasic".into()];
    options.consistency_window = Duration::from_secs(1);
    let report = conformance::run(lab, &options, &mut |_| {}).expect("conformance run");
    let case = &report.results[0];
    assert!(!case.passed, "{case:?}");
    let reason = case.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("status: expected 418, got 200 (answered by echo-v"),
        "{reason}"
    );
    assert!(!reason.contains("passed"), "it never passed: {reason}");
    assert_eq!((report.passed, report.failed), (0, 1));

    let lab = guard.0.take().expect("lab");
    lab.down().expect("down");
}
