//! Compiles every `.proto` under `proto/` with protox (no `protoc` binary needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos: Vec<_> = std::fs::read_dir("proto")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed=proto");
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let fds = protox::compile(&protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The node proxy's admin API dumps its configuration as JSON.
        .type_attribute(".hawser.discovery", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
