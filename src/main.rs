//! The `hearth` binary: a thin driver around [`hearth::cli::main`].

fn main() -> std::process::ExitCode {
    hearth::cli::main(std::time::Instant::now())
}
