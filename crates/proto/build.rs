//! Compiles every `.proto` under the workspace's `proto/` with protox (pure Rust,
//! no system protoc) and generates prost messages and tonic clients/servers.
//!
//! The descriptor set is encoded by protox itself: going through prost_types
//! would drop custom options such as `google.api.http` and
//! `commerce.auth.v1.access`, which the gateway reads at run time.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&proto_root, &proto_root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    fs::write(out_dir.join("mesh_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        // An RPC a service has not implemented yet answers UNIMPLEMENTED.
        .generate_default_stubs(true)
        .include_file("mesh.rs")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Every `.proto` file below `dir`, as a path relative to `root`.
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto")
            && let Ok(relative) = path.strip_prefix(root)
        {
            out.push(relative.to_path_buf());
        }
    }
    Ok(())
}
