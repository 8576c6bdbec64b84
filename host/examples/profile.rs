//! Prints tract's per-op profile of an ONNX image model (batch 1, 3×224×224, one thread):
//! `cargo run --release -p tessera --example profile -- build/models/resnet50/1/model.onnx`.
//! `--nodes N` adds the N slowest nodes; `--amx` lets tract use AMX for int8 models;
//! `--threads N` runs under tract's multi-threaded executor (as the latency mode does);
//! `--runs N` averages N timed runs (default 3).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.iter().find(|a| !a.starts_with("--") && a.parse::<usize>().is_err());
    let path = path.ok_or_else(|| anyhow::anyhow!("usage: profile MODEL.onnx [--nodes N] [--amx]"))?;
    let count = |flag: &str| -> anyhow::Result<usize> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{flag} needs a count"))?.parse()?),
            None => Ok(0),
        }
    };
    let (nodes, threads, runs) = (count("--nodes")?, count("--threads")?, count("--runs")?.max(3));
    let executor = match threads {
        0 | 1 => tract_linalg::multithread::Executor::SingleThread,
        n => tract_linalg::multithread::Executor::multithread(n),
    };
    // As the latency mode runs its plan.
    tessera::internals::tract::run_on_executor(executor, || run(path, nodes, runs, &args))
}

fn run(path: &str, nodes: usize, runs: usize, args: &[String]) -> anyhow::Result<()> {
    tessera::internals::request_amx_int8(args.iter().any(|a| a == "--amx"));
    let path = std::path::Path::new(path);
    let ops = tessera::internals::tract::profile_ops(path, &[1, 3, 224, 224], runs)?;
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    println!("total {total:.2} ms per run");
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
    if nodes > 0 {
        println!();
        for n in tessera::internals::tract::profile_nodes(path, &[1, 3, 224, 224], runs)?.iter().take(nodes) {
            println!("{:>8.3} ms  {} [{}] {}", n.ms, n.name, n.op, n.info);
        }
    }
    Ok(())
}
