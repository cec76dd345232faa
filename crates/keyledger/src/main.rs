fn main() -> std::process::ExitCode {
    keyledger::main()
}
