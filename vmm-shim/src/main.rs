//! The `vmm-shim` command line; everything of substance is in the library.

fn main() -> std::process::ExitCode {
    vmm_shim::cli::main()
}
