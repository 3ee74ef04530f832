//! The one place that asks the CPU what it has. Every kernel takes a [`Tier`] (callers pass
//! [`Tier::best`], detected once; tests pass every tier) and picks its version in one place:
//!
//! - a kernel written once as plain Rust that LLVM vectorizes is declared with [`kernel!`],
//!   which compiles the body once per x86 tier (`#[target_feature]`) and gives `name(..)`
//!   (best tier) and `name_on(tier, ..)`;
//! - a kernel that needs explicit vectors is written once on `simd::Simd` (8 or 16 lanes) and
//!   compiled per width by a `#[target_feature]` wrapper; one that needs a width's own
//!   instructions (VNNI, bf16, AMX tiles) is written in intrinsics. Either way it has one
//!   `*_on(tier, ..)` entry that matches on the tier (`tier >= Tier::Avx2`, …) and falls back
//!   to its portable version.
//!
//! Everything x86-specific sits behind `cfg(target_arch = "x86_64")`: elsewhere (ARM servers)
//! the only tier is [`Tier::Portable`], plain Rust without intrinsics.

/// An instruction set the kernels come in, narrowest first: each tier includes the ones before
/// it (every AMX CPU has AVX512-BF16, every AVX-512 CPU AVX2), so a kernel runs the widest
/// version at or below the tier it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Plain Rust, vectorized only as far as the build's baseline allows (any CPU).
    Portable,
    /// 8 f32 lanes with FMA and fp16 conversion (every x86-64 server CPU since ~2013, AMD
    /// EPYC before Zen 4 included).
    Avx2,
    /// 16 f32 lanes (Intel Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
    /// AVX-512 with bf16 conversion and VNNI (BW, VL, BF16, VNNI: Intel Cooper Lake /
    /// Sapphire Rapids, AMD Zen 4).
    Avx512Bf16,
    /// Intel AMX bf16 tiles, granted by the kernel (Sapphire Rapids and later); `WHISPERD_AMX=0`
    /// (or `WHISPERD_MAX_TIER`) leaves it out.
    Amx,
}

impl Tier {
    /// Every tier, narrowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Portable,
        Tier::Avx2,
        Tier::Avx512,
        Tier::Avx512Bf16,
        Tier::Amx,
    ];

    /// The widest tier this CPU runs (detected once).
    pub fn best() -> Tier {
        *Tier::available().last().unwrap_or(&Tier::Portable)
    }

    /// Every tier this CPU runs, narrowest first (detected once), up to the ceiling the
    /// environment sets (see [`Tier::ceiling`]).
    pub fn available() -> &'static [Tier] {
        static TIERS: std::sync::OnceLock<Vec<Tier>> = std::sync::OnceLock::new();
        TIERS.get_or_init(|| {
            let ceiling = Tier::ceiling(
                std::env::var("WHISPERD_MAX_TIER").ok().as_deref(),
                std::env::var("WHISPERD_AMX").ok().as_deref(),
            );
            let tiers: Vec<Tier> = Tier::ALL
                .into_iter()
                .take_while(|t| *t <= ceiling && detect(*t))
                .collect();
            tracing::debug!(?tiers, ?ceiling, "CPU kernel tiers");
            tiers
        })
    }

    /// The widest tier the kernels may use: `WHISPERD_MAX_TIER` (a tier's [`name`](Tier::name),
    /// e.g. `avx2` to measure an AVX-512 machine as an AVX2-only one would run) and
    /// `WHISPERD_AMX=0` (everything but AMX). Unknown names are ignored with a warning.
    pub fn ceiling(max_tier: Option<&str>, amx: Option<&str>) -> Tier {
        let mut ceiling = Tier::Amx;
        if let Some(name) = max_tier.map(str::trim).filter(|n| !n.is_empty()) {
            match Tier::ALL
                .into_iter()
                .find(|t| t.name() == name.to_ascii_lowercase())
            {
                Some(t) => ceiling = t,
                None => tracing::warn!(
                    value = name,
                    known = ?Tier::ALL.map(Tier::name),
                    "WHISPERD_MAX_TIER is not a tier name; ignored"
                ),
            }
        }
        if amx.is_some_and(|v| v == "0" || v == "false") {
            ceiling = ceiling.min(Tier::Avx512Bf16);
        }
        ceiling
    }

    /// Whether this CPU runs the kernels of `self`.
    pub fn is_available(self) -> bool {
        Tier::available().contains(&self)
    }

    /// A short lower-case name (tables, logs).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Avx512Bf16 => "avx512-bf16",
            Tier::Amx => "amx",
        }
    }
}

/// Whether the CPU has `tier`'s own features (the tiers before it are checked by the caller).
#[cfg(target_arch = "x86_64")]
fn detect(tier: Tier) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match tier {
        Tier::Portable => true,
        Tier::Avx2 => has!("avx2") && has!("fma") && has!("f16c"),
        Tier::Avx512 => has!("avx512f") && has!("avx512dq"),
        Tier::Avx512Bf16 => {
            has!("avx512bw") && has!("avx512vl") && has!("avx512bf16") && has!("avx512vnni")
        }
        Tier::Amx => amx_granted(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(tier: Tier) -> bool {
    tier == Tier::Portable
}

/// CPUID: AMX-TILE and AMX-BF16, then ask Linux for the tile data state.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_granted() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_granted() -> bool {
    false
}

/// Declares a kernel written once as plain Rust: `$vis fn name(args)` runs it on
/// [`Tier::best`], `$vis fn name_on(tier, args)` on `tier` (the body compiled for AVX-512,
/// for AVX2 + FMA + F16C, or for the build's baseline; only the instructions LLVM may vectorize
/// it to differ). `tier` must be one of [`Tier::available`].
macro_rules! kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $name_on:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $name_on($crate::isa::Tier::best(), $($arg),*)
        }

        /// The same kernel on the instructions of `tier` (one of `Tier::available`).
        #[allow(clippy::too_many_arguments)]
        $vis fn $name_on(tier: $crate::isa::Tier, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            debug_assert!(tier.is_available(), "{tier:?} kernels need CPU features this one lacks");
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                if tier >= $crate::isa::Tier::Avx512 {
                    // SAFETY: `tier` is available (the caller's contract), so the CPU has
                    // AVX-512 F/DQ and AVX2 + FMA.
                    return unsafe { wide($($arg),*) };
                }
                if tier >= $crate::isa::Tier::Avx2 {
                    // SAFETY: as above, AVX2 + FMA + F16C.
                    return unsafe { avx2($($arg),*) };
                }
            }
            let _ = tier;
            generic($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Tier;

    #[test]
    fn tiers_are_a_prefix_of_all_and_best_is_the_last() {
        let available = Tier::available();
        assert_eq!(available, &Tier::ALL[..available.len()]);
        assert_eq!(available[0], Tier::Portable);
        assert_eq!(Tier::best(), *available.last().unwrap());
    }

    #[test]
    fn the_environment_lowers_the_ceiling_and_nothing_raises_it() {
        assert_eq!(Tier::ceiling(None, None), Tier::Amx);
        assert_eq!(Tier::ceiling(Some("avx2"), None), Tier::Avx2);
        assert_eq!(Tier::ceiling(Some(" AVX512 "), None), Tier::Avx512);
        assert_eq!(Tier::ceiling(Some("portable"), Some("0")), Tier::Portable);
        assert_eq!(Tier::ceiling(None, Some("0")), Tier::Avx512Bf16);
        assert_eq!(Tier::ceiling(Some("amx"), Some("false")), Tier::Avx512Bf16);
        assert_eq!(
            Tier::ceiling(Some("sse9"), None),
            Tier::Amx,
            "unknown names are ignored"
        );
        assert_eq!(Tier::ceiling(Some(""), Some("1")), Tier::Amx);
    }
}
