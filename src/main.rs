//! `whisperd`: the binary's edge. Parses the command line, sets up logging, and hands off to `cli`.

use mimalloc::MiMalloc;

// glibc malloc returns the large attention temporaries to the OS on every pass (mmap/munmap page
// faults cost ~0.28 s per encoder window); mimalloc keeps them.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod cli;

unsafe extern "C" {
    /// mimalloc's option setter (`mi_option_t` is a C enum).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc's option enum.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// By default mimalloc hands freed pages back to the OS 10 ms after they are freed; the
/// encoder frees and reallocates the same ~100 MB of temporaries every 50–100 ms, so each
/// window paid for faulting in and zeroing them again (`clear_page_erms` + `memset` ~10 % of a
/// loaded server's profile). A 1-s delay keeps them while requests flow (8 clients q8: 37 → 45
/// audio s/s; peak RSS ~480 → ~600 MB) and still returns them when the server goes idle.
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
fn keep_freed_memory_briefly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads options atomically at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory_briefly();
    cli::main()
}
