fn main() -> std::process::ExitCode {
    wharf::cli::machine::main()
}
