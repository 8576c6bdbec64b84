//! Prints tract's per-op profile of an ONNX image model (batch 1, 3×224×224, one thread):
//! `cargo run --release -p tessera --example profile -- build/models/resnet50/1/model.onnx`.

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: profile MODEL.onnx"))?;
    let ops = tessera::inference::profile_ops(std::path::Path::new(&path), &[1, 3, 224, 224], 3)?;
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    for o in &ops {
        println!(
            "{:>8.2} ms {:>5.1} % {:>4} × {:<24} slowest: {}",
            o.ms,
            100.0 * o.ms / total,
            o.nodes,
            o.op,
            o.slowest_node
        );
    }
    Ok(())
}
