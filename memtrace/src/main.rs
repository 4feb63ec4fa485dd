use clap::Parser as _;
use memtrace::{
    cli::{Cli, Command},
    commands,
};

// One thread runs the event loop, the ring buffer's readiness and the sink tasks: a kill wakes
// that thread and nothing else before the event is handed to the sinks. The multi-threaded
// runtime polled the ring on a worker that then woke the main task, which woke a sink's
// worker: on a busy host each of those wakeups can wait for a CPU (BENCHMARKS.md, latency).
// Blocking work has threads of its own (the charge worker, stdout writes, journald sends, a
// kill's file reads).
fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("memtrace: error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run());
    // A kill's file reads that outlived their budget (a hung filesystem) must not hold the
    // exit: whatever blocking work is still running after this is abandoned.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn run() -> std::process::ExitCode {
    // One malloc arena: glibc gives each thread that allocates (the charge worker) an arena of
    // its own, which kept about 8 MB more resident at rest (BENCHMARKS.md §4, issue 12). The
    // threads allocate little and rarely at once, so sharing one costs nothing measurable.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc tunable; called before any other thread allocates.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
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
        Command::Manpages { dir } => commands::manpages::run(&dir),
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
