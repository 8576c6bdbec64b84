//! Classify one image with Tessera embedded in a Rust program, the C example's counterpart
//! (`capi/examples/classify.c`): `cargo run --release -p tessera --example embed -- CONFIG IMAGE`.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let [_, config, image]: [String; 3] =
        std::env::args().collect::<Vec<_>>().try_into().map_err(|_| anyhow::anyhow!("usage: embed CONFIG IMAGE"))?;
    let config = tessera::Config::from_file(Path::new(&config))?;
    let host = tessera::Host::builder().config(config).build()?;
    let request = tessera::ClassifyRequest::new(std::fs::read(image)?, host.context());
    let classification = host.classify(&request)?;
    println!("{}", serde_json::to_string(&classification)?);
    Ok(())
}
