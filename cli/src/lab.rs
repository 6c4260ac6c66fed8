//! `hawser lab`: a multi-node mesh in network namespaces on this machine
//! (see `hawser_tests::lab` for the topology). Needs root.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hawser_tests::lab::apply::Mode;
use hawser_tests::lab::{Lab, LabConfig, LabError, conformance};

/// Lab subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCmd {
    /// Build the lab: nodes, underlay, CNI chains (bridge + host-local +
    /// hawser-cni) and the control plane. Removes a stale lab first.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Apply manifests (a file or a directory): Namespaces, Services,
    /// Deployments and Pods (created on nodes as kubelet would), HTTPRoutes,
    /// GRPCRoutes, AuthorizationPolicies. Each document is checked as the
    /// Kubernetes API server would (kind, unknown fields, namespace exists);
    /// a refused one is reported with its file, document, field and reason
    /// and nothing of it applies, while the valid ones do. Exits 1 when any
    /// document was refused.
    Apply {
        /// File or directory.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        /// Check every document and print what would change, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete what manifests (a file or a directory) describe: pods are
    /// removed as kubelet would (CNI DEL), objects withdrawn.
    Delete {
        /// File or directory.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Remove everything the lab made (safe to run twice).
    Down,
    /// Nodes, pods, processes and where things are.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the Gateway API mesh conformance cases against the lab: apply the
    /// base and each test's manifests, send each case's requests from its
    /// client pod with the echo client, check every expectation (retrying
    /// until 3 passes in a row), print a table and `N passed, M failed`.
    /// Exits non-zero when any case failed.
    Conformance {
        /// The cases (expectations.json, base-manifests.yaml, mesh/);
        /// default conformance/gamma of the repository.
        dir: Option<PathBuf>,
        /// Run only this test (its short name, e.g. MeshBasic); repeat for more.
        #[arg(long = "test", value_name = "NAME")]
        tests: Vec<String>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long a case may take to pass 3 times in a row (upstream: 30s).
        #[arg(long, default_value = "30s", value_parser = hawser_api::duration::parse_duration)]
        timeout: Duration,
        /// Leave the base manifests applied afterwards.
        #[arg(long)]
        keep_base: bool,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// `<namespace>/<pod>`.
        pod: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Where the lab keeps its state, and the prefix of its namespaces.
#[derive(Debug, clap::Args)]
pub struct LabOpts {
    /// State directory (logs, CA, manifests, CNI config).
    #[arg(
        long,
        global = true,
        env = "HAWSER_LAB_DIR",
        default_value = "/var/run/hawser-lab"
    )]
    state_dir: PathBuf,
    /// Prefix of the lab's network namespaces.
    #[arg(long, global = true, env = "HAWSER_LAB_NAME", default_value = "hawser")]
    name: String,
}

impl LabOpts {
    /// The configuration naming this lab (enough to load one that is up).
    pub fn config(&self) -> LabConfig {
        LabConfig::new(&self.name, 0, &self.state_dir)
    }
}

/// Runs one lab subcommand.
pub fn run(opts: LabOpts, cmd: LabCmd) -> anyhow::Result<ExitCode> {
    let config = |nodes| LabConfig::new(&opts.name, nodes, &opts.state_dir);
    match cmd {
        LabCmd::Up { nodes } => {
            outln!(
                "bringing up a {nodes}-node lab in {}",
                opts.state_dir.display()
            )?;
            let mut cfg = config(nodes);
            // A closed stdout must not stop the lab half way up: progress is best effort.
            cfg.progress = Some(|step| {
                let _ = outln!("  {step}");
            });
            let lab = Lab::up(cfg).context("lab up failed (everything it created was removed)")?;
            print_status(&lab)?;
            outln!("\nnext: hawser lab status; hawser lab down removes it all")?;
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Apply { path, dry_run } => {
            let mut lab = Lab::load(&config(0))?;
            let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
            print_report(&lab.apply_with(&path, mode)?)
        }
        LabCmd::Delete { path } => {
            let mut lab = Lab::load(&config(0))?;
            print_report(&lab.delete(&path)?)
        }
        LabCmd::Down => match Lab::load(&config(0)) {
            Ok(lab) => {
                lab.down().context("lab down")?;
                outln!("lab removed")?;
                Ok(ExitCode::SUCCESS)
            }
            Err(LabError::NotUp(dir)) => {
                outln!("no lab is up in {}", dir.display())?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e.into()),
        },
        LabCmd::Status { json } => {
            let lab = Lab::load(&config(0))?;
            let status = lab.status();
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                outln!("{status}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Conformance {
            dir,
            tests,
            json,
            timeout,
            keep_base,
        } => {
            let mut lab = Lab::load(&config(0))?;
            let dir = match dir {
                Some(d) => d,
                None => conformance::default_dir()?,
            };
            let mut options = conformance::Options::new(dir);
            options.tests = tests;
            options.consistency_window = timeout;
            options.keep_base = keep_base;
            let report = conformance::run(&mut lab, &options, &mut |line| eprintln!("{line}"))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                out!("{}", report.table())?;
            }
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCmd::Exec { pod, command } => {
            let lab = Lab::load(&config(0))?;
            let (ns, name) = pod
                .split_once('/')
                .with_context(|| format!("{pod:?}: expected <namespace>/<pod>"))?;
            let p = lab
                .pod(ns, name)
                .with_context(|| format!("no pod {ns}/{name} in the lab"))?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &p.netns])
                .args(&command)
                .status()
                .with_context(|| format!("running {command:?} in {ns}/{name}"))?;
            Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ))
        }
    }
}

/// Prints what was done and what was refused; fails if anything was refused.
fn print_report(report: &hawser_tests::lab::apply::ApplyReport) -> anyhow::Result<ExitCode> {
    for line in &report.applied {
        outln!("{line}")?;
    }
    for e in &report.errors {
        eprintln!("refused: {e}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_status(lab: &Lab) -> anyhow::Result<()> {
    outln!("{}", lab.status())
}
