//! Thin entry point: parse the command line and hand over to the library.

use clap::Parser;
use proxmox_netbox_operator::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    proxmox_netbox_operator::tls::install_crypto_provider();
    let cli = Cli::parse();
    proxmox_netbox_operator::telemetry::init(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Crdgen(args) => cli::crdgen(&args),
        Command::Facts { command } => cli::facts(command),
        Command::Sync(args) => cli::sync(args).await,
        Command::Run(args) => {
            let guard = args.endpoints.guard();
            cli::run(args, |metrics| cli::live_pipeline(guard, Some(metrics))).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, kind = e.metric_label(), "stopped");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
