//! With the `grpc` feature: compiles the gRPC contracts in `proto/` with `protox` (no system
//! `protoc`) into tonic servers, writes their descriptor set for server reflection, and
//! refuses to build if Tessera's `image_recognition` service stopped being wire-compatible
//! with the seed's file.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    #[cfg(feature = "grpc")]
    grpc::compile()?;
    Ok(())
}

#[cfg(feature = "grpc")]
mod grpc {
    use std::collections::HashMap;
    use std::error::Error;
    use std::path::PathBuf;

    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    /// The seed's contract, unchanged; ours (a superset of it) and KServe's Open Inference Protocol.
    const SEED: &str = "image_recognition.proto";
    const OURS: &[&str] = &["tessera_image_recognition.proto", "grpc_predict_v2.proto"];

    /// This package's directory, read when the script runs: cargo's hash of a path package does not
    /// include where it is, so two checkouts sharing a target directory share this script's binary,
    /// and a path compiled into it (`env!`) would be the other checkout's.
    fn manifest_dir() -> Result<PathBuf, Box<dyn Error>> {
        Ok(PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?))
    }

    /// The gRPC servers' code and descriptors, after the seed-compatibility check.
    pub fn compile() -> Result<(), Box<dyn Error>> {
        let root = manifest_dir()?.join("../proto");
        println!("cargo:rerun-if-changed={}", root.display());
        let seed = protox::compile([root.join(SEED)], [&root])?;
        let ours = protox::compile(OURS.iter().map(|f| root.join(f)), [&root])?;
        check_wire_compatible(&seed, &ours)?;
        let out = PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("descriptors.bin"), ours.encode_to_vec())?;
        tonic_prost_build::configure().build_client(false).build_server(true).compile_fds(ours)?;
        Ok(())
    }

    /// Every message and field of the seed's file is in ours under the same name, number, type and
    /// label, and the service has the same methods with the same types: a client generated from
    /// the seed's file keeps working against our server.
    fn check_wire_compatible(seed: &FileDescriptorSet, ours: &FileDescriptorSet) -> Result<(), String> {
        let index = |set: &FileDescriptorSet| {
            let mut messages: HashMap<String, DescriptorProto> = HashMap::new();
            let mut methods = HashMap::new();
            for file in &set.file {
                let package = file.package();
                for m in &file.message_type {
                    messages.insert(format!("{package}.{}", m.name()), m.clone());
                }
                for s in &file.service {
                    for m in &s.method {
                        let key = format!("{package}.{}/{}", s.name(), m.name());
                        methods.insert(key, (m.input_type().to_string(), m.output_type().to_string()));
                    }
                }
            }
            (messages, methods)
        };
        let (seed_messages, seed_methods) = index(seed);
        let (our_messages, our_methods) = index(ours);
        for (name, theirs) in &seed_messages {
            let mine = our_messages.get(name).ok_or(format!("message {name} of the seed's proto is missing"))?;
            for field in &theirs.field {
                let same = mine.field.iter().find(|f| f.number() == field.number()).is_some_and(|f| {
                    f.name() == field.name()
                        && f.r#type() == field.r#type()
                        && f.label() == field.label()
                        && f.type_name() == field.type_name()
                });
                if !same {
                    return Err(format!(
                        "field {name}.{} = {} differs from the seed's proto",
                        field.name(),
                        field.number()
                    ));
                }
            }
        }
        for (method, types) in &seed_methods {
            if our_methods.get(method) != Some(types) {
                return Err(format!("rpc {method} differs from the seed's proto"));
            }
        }
        Ok(())
    }
}
