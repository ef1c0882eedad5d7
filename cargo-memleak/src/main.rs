fn main() -> std::process::ExitCode {
    cargo_memleak::main_with_args(std::env::args_os())
}
