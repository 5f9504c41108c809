//! The `weft` command: the relay server and scriptable client tools.
//!
//! Every flag can also be set through the environment variable shown in `--help` (`WEFT_*`).
//! Command output goes to stdout; logs and progress go to stderr.

#![allow(clippy::disallowed_methods)] // The binary owns the clock.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
