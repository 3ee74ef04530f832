//! Which SIMD instruction set the CPU kernels use (`rowmatmul`, `kernels`, `intgemm`): detected
//! once, shared by all of them.

/// An instruction set the hand-written kernels come in. [`Tier::best`] is the widest this CPU
/// runs; tests run every tier in [`Tier::available`] so the narrower ones stay checked on wide
/// machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// 16 f32 lanes (Intel Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
    /// 8 f32 lanes with FMA and fp16 conversion (every x86-64 server CPU since ~2013, AMD
    /// EPYC before Zen 4 included).
    Avx2,
    /// Plain Rust, vectorized only as far as the build's baseline allows.
    Portable,
}

impl Tier {
    pub(crate) fn best() -> Tier {
        Tier::available()[0]
    }

    /// Every tier this CPU can run, widest first (detected once).
    pub(crate) fn available() -> &'static [Tier] {
        static TIERS: std::sync::OnceLock<Vec<Tier>> = std::sync::OnceLock::new();
        TIERS.get_or_init(|| {
            let mut tiers = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c");
                if avx2
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    tiers.push(Tier::Avx512);
                }
                if avx2 {
                    tiers.push(Tier::Avx2);
                }
            }
            tiers.push(Tier::Portable);
            tiers
        })
    }
}
