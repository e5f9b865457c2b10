use anyhow::Context;
use clap::Parser;
use metastore_node::config::{Args, Command, LogFormat};
use tracing_subscriber::EnvFilter;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    if let Some(Command::ExportSnapshot { data_dir, file }) = &args.command {
        let (revision, bytes) = metastore_node::storage::export_snapshot(data_dir, file)
            .await
            .with_context(|| format!("cannot export a snapshot of the store in {}", data_dir.display()))?;
        println!("wrote {} ({bytes} bytes, revision {revision})", file.display());
        return Ok(());
    }
    let config = args.resolve().context("invalid configuration")?;
    metastore_node::server::run(config, shutdown_signal()).await.context("metastore failed")?;
    Ok(())
}
