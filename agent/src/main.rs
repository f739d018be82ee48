use clap::Parser;
use imagewarden::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMAGEWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Check(args) => imagewarden::cmd_check::run(&args),
        Command::Cleanup { pin_dir } => {
            let dir = imagewarden::probes::pin_dir_under(&pin_dir);
            imagewarden::probes::remove_pins(&dir);
            eprintln!("imagewarden: removed pinned state under {}", dir.display());
            0
        }
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("imagewarden: cannot start the runtime: {e}");
                    std::process::exit(2);
                }
            };
            match rt.block_on(imagewarden::cmd_run::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("imagewarden: {e:#}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
