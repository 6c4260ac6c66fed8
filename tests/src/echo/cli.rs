//! The `hawser-echo` command line: `serve` runs the backend on its ports
//! until SIGINT/SIGTERM, `client` sends requests and prints what came back
//! (text as Istio's echo client prints it, or `--json`). Arguments are parsed
//! here once into the library's typed options.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::client::{self, ClientOptions, Protocol, Report, Target};
use super::duration::parse_duration;
use super::server::{Echo, ServerConfig};

/// The lab's echo backend and client.
#[derive(Debug, Parser)]
#[command(name = "hawser-echo", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer every request with the key=value lines of what arrived.
    Serve(ServeArgs),
    /// Send requests and print each answer.
    Client(ClientArgs),
}

/// `hawser-echo serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP port (HTTP/1.1, h2c, gRPC, WebSocket); repeat for more.
    #[arg(long = "port", required = true, value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Extra port for gRPC clients (serves the same as --port); repeat for more.
    #[arg(long = "grpc-port", value_name = "PORT")]
    pub grpc_ports: Vec<u16>,
    /// Plain TCP echo port (bytes back as they come); repeat for more.
    #[arg(long = "tcp-port", value_name = "PORT")]
    pub tcp_ports: Vec<u16>,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// The pod name reported as Hostname= (default: $HOSTNAME, then the kernel hostname).
    #[arg(long, env = "POD_NAME")]
    pub hostname: Option<String>,
    /// The namespace reported as Namespace=.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The version reported as ServiceVersion=.
    #[arg(long = "service-version", env = "SERVICE_VERSION")]
    pub service_version: Option<String>,
    /// How long open connections may finish after a signal (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub drain_timeout: Duration,
}

/// `hawser-echo client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The URL: http://host[:port]/path?query or grpc://host:port[/service/method].
    #[arg(value_parser = parse_target_arg)]
    pub url: Target,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET", value_parser = parse_method_arg)]
    pub method: Method,
    /// A request header (gRPC: metadata), 'Name: value'; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header_arg)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How many requests, over kept-alive connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Use HTTP/2 cleartext with prior knowledge.
    #[arg(long, conflicts_with = "grpc")]
    pub http2: bool,
    /// Call the gRPC Echo service (implied by grpc:// URLs).
    #[arg(long)]
    pub grpc: bool,
    /// Limit per request, connecting included (e.g. 500ms, 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Dial this address instead of resolving the URL's host.
    #[arg(long, value_name = "IP:PORT")]
    pub connect_to: Option<SocketAddr>,
    /// HTTP request body.
    #[arg(long, default_value = "")]
    pub body: String,
    /// gRPC EchoRequest message.
    #[arg(long, default_value = "")]
    pub message: String,
    /// Print one JSON document (outcomes and summary) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_target_arg(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

fn parse_header_arg(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    client::parse_header(s)
}

fn parse_method_arg(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
}

impl ClientArgs {
    /// The library options these arguments mean.
    pub fn options(&self) -> ClientOptions {
        let mut opts = ClientOptions::new(self.url.clone());
        opts.method = self.method.clone();
        opts.headers = self.headers.clone();
        opts.count = self.count as usize;
        if self.grpc {
            opts.protocol = Protocol::Grpc;
        } else if self.http2 {
            opts.protocol = Protocol::Http2;
        }
        opts.timeout = self.timeout;
        opts.connect_to = self.connect_to;
        opts.body = Bytes::from(self.body.clone());
        opts.message = self.message.clone();
        opts
    }
}

impl ServeArgs {
    /// The backend config these arguments mean, falling back to `$HOSTNAME`
    /// and the kernel's hostname for the pod name.
    pub fn config(&self) -> ServerConfig {
        let hostname = self
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mut config = ServerConfig::new(hostname);
        config.namespace = self.namespace.clone().filter(|n| !n.is_empty());
        config.version = self.service_version.clone().filter(|v| !v.is_empty());
        config.drain_timeout = self.drain_timeout;
        config
    }
}

/// Runs `serve` until SIGINT or SIGTERM.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let echo = Echo::new(args.config());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let http_ports = args.ports.iter().chain(&args.grpc_ports);
    for (port, tcp) in http_ports
        .map(|p| (*p, false))
        .chain(args.tcp_ports.iter().map(|p| (*p, true)))
    {
        let addr = SocketAddr::new(args.bind, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tracing::info!(%addr, kind = if tcp { "tcp" } else { "http" }, hostname = %echo.config().hostname, "listening");
        if tcp {
            servers.spawn(echo.serve_tcp(listener, shutdown));
        } else {
            servers.spawn(echo.serve_http(listener, shutdown));
        }
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Runs `client`, printing to stdout. Returns whether every request got a
/// response.
pub async fn client(args: &ClientArgs) -> anyhow::Result<bool> {
    let outcomes = client::run(&args.options()).await;
    let all_answered = outcomes.iter().all(|o| o.error.is_none());
    if args.json {
        let report = Report::new(outcomes);
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", client::format_text(&outcomes));
    }
    Ok(all_answered)
}

/// The binary's `main`: parses arguments, sets up logging to stderr, runs.
/// Exit status: 0 on success, 1 when a client request failed or serving
/// failed, 2 for bad arguments.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hawser-echo: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Serve(args) => serve(args).await.map(|()| true),
            Command::Client(args) => client(args).await,
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hawser-echo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
