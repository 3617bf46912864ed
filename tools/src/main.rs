//! The `imagefs` command line. It parses arguments and calls library
//! functions that tests call too; nothing of substance lives here.
#![forbid(unsafe_code)]

mod agent;
mod args;
mod gc;
mod images;
mod keys;
mod logging;
mod node;
mod profile;
mod pull;
mod report;
mod serve;
mod signals;
mod tiers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    logging::init(cli.log_format);
    let result = signals::Signals::install()
        .map_err(|e| format!("installing the SIGINT/SIGTERM handler: {e}").into())
        .and_then(|signals| cli.command.run(&signals));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`imagefs inspect … | head`) is the reader's choice.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("imagefs: {}", imagefs::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
