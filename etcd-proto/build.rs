//! Generates the message types and the gRPC servers and clients from `proto/`. The files are
//! parsed in-process (protox), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/mvccpb/kv.proto", "proto/authpb/auth.proto", "proto/etcdserverpb/rpc.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
