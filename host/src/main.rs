use std::process::ExitCode;

fn main() -> ExitCode {
    anode::cli::main()
}
