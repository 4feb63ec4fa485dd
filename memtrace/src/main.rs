use clap::Parser as _;
use memtrace::{
    cli::{Cli, Command},
    commands,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Watch(args) => commands::watch::run(args).await,
        Command::Probes(args) => commands::probes::run(args).await,
        Command::Hotspots(args) => commands::hotspots::run(args).await,
        Command::Top(args) => commands::top::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what to do; the causes follow on the same line.
            eprintln!("memtrace: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
