fn main() -> std::process::ExitCode {
    wharf::cli::portable::main()
}
