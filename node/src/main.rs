fn main() -> anyhow::Result<()> {
    metastore_node::cli::main(metastore_node::VERSION)
}
