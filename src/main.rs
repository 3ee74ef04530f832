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

/// How long freed memory stays with the process before mimalloc hands it back to the OS.
#[derive(Clone, Copy)]
pub(crate) enum FreedMemory {
    /// One second (the server): the encoder frees and reallocates the same ~100 MB of
    /// temporaries every 50–100 ms, and faulting in and zeroing them again was ~10 % of a
    /// loaded server's profile (`clear_page_erms` + `memset`); kept for 1 s they are reused
    /// while requests flow and still go back when the server goes idle. The mimalloc built
    /// here (v3; libmimalloc-sys 0.1.49 since the first commit) defaults to 1 s already, so
    /// this pins its default. The figure measured when this was added (8 clients q8: 37 → 45
    /// audio s/s, peak RSS ~480 → ~600 MB) assumed v2's 10-ms default and is not re-checked.
    KeepBriefly,
    /// Until the process exits (`transcribe`, `batch`: one run, then exit). Even at 1 s, a
    /// 45-file tiny.en q8 beam-5 run took ~312,000 page faults (the windows' largest
    /// temporaries still went back now and then, and came back zeroed); kept, ~69,000. On a
    /// Zen 3 (`farm-bench -n 3`, interleaved): system time 1.9 → 1.3 s, wall 0.963× (0.88–0.97),
    /// peak RSS 266 → 285 MB.
    Keep,
}

/// Sets how long freed memory is kept; `MIMALLOC_PURGE_DELAY` in the environment wins.
pub(crate) fn keep_freed_memory(how: FreedMemory) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        let ms = match how {
            FreedMemory::KeepBriefly => 1000,
            FreedMemory::Keep => -1,
        };
        // SAFETY: sets an integer option; mimalloc reads options atomically at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
    }
}

/// Transparent huge pages cost more than they give here. mimalloc asks for them on its arenas
/// (`madvise(MADV_HUGEPAGE)`), so every first touch of a 2-MB region faults in and zeroes the
/// whole huge page, and what a purge returns comes back as another 2-MB zeroing: 7 % of a
/// q8 run's profile was `clear_page_erms` under `do_huge_pmd_anonymous_page`. The decoder
/// streams its weights in order, so 4-KB pages cost it no measurable TLB time. On a Zen 4
/// (45 files, tiny.en, 2 threads, interleaved): q8 wall 18.5 → 15.9 s, f32 27.4 → 25.8 s,
/// system time 4.6 → 2.6 s, peak RSS lower. `PR_SET_THP_DISABLE` turns them off for the whole
/// process, whatever is advised and in THP's `always` mode too (the same call mimalloc makes
/// for `MIMALLOC_ALLOW_THP=0`, without depending on its option numbering);
/// `MIMALLOC_ALLOW_THP` in the environment wins.
fn avoid_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory of ours;
    // on a kernel without it the call fails and nothing changes.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory(FreedMemory::KeepBriefly);
    avoid_transparent_huge_pages();
    cli::main()
}
