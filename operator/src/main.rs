//! `metastore-operator`: the Kubernetes operator for `MetaStoreCluster` resources.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Kubernetes operator for metaStore clusters.
#[derive(Parser)]
#[command(name = "metastore-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MetaStoreCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (not implemented yet).
    Run,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => match metastore_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("metastore-operator: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => {
            eprintln!("metastore-operator: the reconciler is not implemented yet");
            ExitCode::FAILURE
        }
    }
}
