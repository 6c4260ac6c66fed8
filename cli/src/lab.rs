//! `hawser lab`: a multi-node mesh in network namespaces on this machine
//! (see `hawser_tests::lab` for the topology). Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hawser_tests::lab::{Lab, LabConfig, LabError, sys};

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
    /// GRPCRoutes, AuthorizationPolicies. Invalid documents are reported and
    /// skipped; the rest applies.
    Apply {
        /// File or directory.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
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

/// Runs one lab subcommand.
pub fn run(opts: LabOpts, cmd: LabCmd) -> anyhow::Result<ExitCode> {
    let config = |nodes| LabConfig::new(&opts.name, nodes, &opts.state_dir);
    match cmd {
        LabCmd::Up { nodes } => {
            println!(
                "bringing up a {nodes}-node lab in {}",
                opts.state_dir.display()
            );
            let mut cfg = config(nodes);
            cfg.progress = Some(|step| println!("  {step}"));
            let lab = Lab::up(cfg).context("lab up failed (everything it created was removed)")?;
            print_status(&lab);
            println!("\nnext: hawser lab status; hawser lab down removes it all");
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Apply { path } => {
            let mut lab = Lab::load(&config(0))?;
            Ok(print_report(&lab.apply(&path)?))
        }
        LabCmd::Delete { path } => {
            let mut lab = Lab::load(&config(0))?;
            Ok(print_report(&lab.delete(&path)?))
        }
        LabCmd::Down => match Lab::load(&config(0)) {
            Ok(lab) => {
                lab.down().context("lab down")?;
                println!("lab removed");
                Ok(ExitCode::SUCCESS)
            }
            Err(LabError::NotUp(dir)) => {
                println!("no lab is up in {}", dir.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e.into()),
        },
        LabCmd::Status { json } => {
            let lab = Lab::load(&config(0))?;
            if json {
                let processes: Vec<_> = lab
                    .state()
                    .processes
                    .iter()
                    .map(|p| serde_json::json!({"role": p.role, "pid": p.pid, "alive": sys::alive(p.pid), "log": p.log}))
                    .collect();
                let out = serde_json::json!({
                    "nodes": lab.state().nodes,
                    "pods": lab.state().pods.iter().map(|p| serde_json::json!({
                        "namespace": p.namespace, "name": p.name, "node": p.node, "ip": p.ip,
                    })).collect::<Vec<_>>(),
                    "processes": processes,
                    "trustBundle": lab.trust_bundle(),
                    "manifests": lab.manifests_dir(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_status(&lab);
            }
            Ok(ExitCode::SUCCESS)
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
fn print_report(report: &hawser_tests::lab::apply::ApplyReport) -> ExitCode {
    for line in &report.applied {
        println!("{line}");
    }
    for e in &report.errors {
        eprintln!("refused: {e}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_status(lab: &Lab) {
    let s = lab.state();
    println!("nodes:");
    for n in &s.nodes {
        println!(
            "  {:<8} netns {:<14} underlay {:<15} pods {}",
            n.name, n.netns, n.underlay_ip, n.pod_cidr
        );
    }
    println!("pods:");
    if s.pods.is_empty() {
        println!("  (none)");
    }
    for p in &s.pods {
        let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!("  {}/{:<20} {:<8} {}", p.namespace, p.name, p.node, ip);
    }
    println!("processes:");
    for p in &s.processes {
        let state = if sys::alive(p.pid) { "running" } else { "DEAD" };
        println!(
            "  {:<16} pid {:<8} {state:<8} log {}",
            p.role,
            p.pid,
            p.log.display()
        );
    }
    println!(
        "control plane: {}:15012 (admin {} inside the underlay namespace)",
        hawser_tests::lab::CONTROL_PLANE_IP,
        hawser_tests::lab::ADMIN_ADDR
    );
    println!("trust bundle:  {}", lab.trust_bundle().display());
    println!("manifests:     {}", lab.manifests_dir().display());
}
