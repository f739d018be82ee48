use clap::Parser;
use imagewarden::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMAGEWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() {
    imagewarden::memory::tune();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Check(args) => imagewarden::cmd_check::run(&args),
        Command::Cleanup { pin_dir, wait } => {
            match imagewarden::probes::cleanup_root(&pin_dir, wait) {
                Ok(dirs) => {
                    for d in &dirs {
                        eprintln!("imagewarden: removed pinned state {}", d.display());
                    }
                    eprintln!(
                        "imagewarden: nothing pinned under {} any more",
                        pin_dir.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("imagewarden cleanup: {e}");
                    1
                }
            }
        }
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("imagewarden: cannot start the runtime: {e}");
                    std::process::exit(2);
                }
            };
            // On a worker, not in block_on: the main thread is not a tokio
            // worker, and every wake-up across it costs a thread hand-off
            // (measured: docs/benchmarks.md).
            match rt.block_on(async { tokio::spawn(imagewarden::cmd_run::run(args)).await }) {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("imagewarden: {e:#}");
                    2
                }
                Err(e) => {
                    eprintln!("imagewarden: the agent task failed: {e}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
