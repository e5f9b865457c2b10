//! The `metastore` command line: one member, until SIGINT or SIGTERM; or one of its
//! subcommands.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use crate::config::{Args, Command, LogFormat};

/// openraft logs every failed replication retry (twice a second per unreachable peer); the
/// network layer logs a peer going down and coming back once instead.
const DEFAULT_LOG_FILTER: &str = "info,openraft=error,openraft::replication=off,openraft::engine=off";

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour codes only for a person at a terminal, never in a file or a pod's logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Runs the command line of a member that reports release `version`.
pub fn main(version: &'static str) -> anyhow::Result<()> {
    let matches = Args::command().version(version).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(args.log_format);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(async {
        if let Some(Command::ExportSnapshot { data_dir, file }) = &args.command {
            let (revision, bytes) =
                crate::storage::export_snapshot(data_dir, file).await.with_context(|| {
                    format!("cannot export a snapshot of the store in {}", data_dir.display())
                })?;
            println!("wrote {} ({bytes} bytes, revision {revision})", file.display());
            return Ok(());
        }
        let mut config = args.resolve().context("invalid configuration")?;
        config.version = version;
        crate::server::run(config, shutdown_signal()).await.context("metastore failed")?;
        Ok(())
    })
}
