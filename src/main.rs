//! The posthorn binary: everything is decided by the name it was called by
//! (`sendmail`, `mailq`, `posthorn`) and its arguments; see `cli`.

fn main() -> std::process::ExitCode {
    posthorn::cli::main(std::env::args_os().collect())
}
