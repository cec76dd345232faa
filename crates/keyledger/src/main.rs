//! Entry point of the `keyledger` binary. It only calls into the crate's library, where the
//! command line, the commands and their exit codes (docs/cli.md) are defined and documented.

fn main() -> std::process::ExitCode {
    keyledger::main()
}
