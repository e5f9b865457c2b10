//! The member's next release, for the upgrade scenario: this build, reporting another version.
//! The scenario rolls a cluster onto it (image `metastore:next`) while clients run.

fn main() -> anyhow::Result<()> {
    metastore_node::cli::main(concat!(env!("CARGO_PKG_VERSION"), "-next"))
}
