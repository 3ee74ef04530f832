//! `whisperd`: the binary's edge. Parses the command line, sets up logging, and hands off to `cli`.

use mimalloc::MiMalloc;

// glibc malloc returns the large attention temporaries to the OS on every pass (mmap/munmap page
// faults cost ~0.28 s per encoder window); mimalloc keeps them.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
