//! Which SIMD instruction set the CPU kernels use (`rowmatmul`, `elementwise`, `query`,
//! `intgemm`): detected once, shared by all of them.

/// An instruction set the hand-written kernels come in. [`Tier::best`] is the widest this CPU
/// runs; tests run every tier in [`Tier::available`] so the narrower ones stay checked on wide
/// machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// 16 f32 lanes (Intel Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
    /// 8 f32 lanes with FMA and fp16 conversion (every x86-64 server CPU since ~2013, AMD
    /// EPYC before Zen 4 included).
    Avx2,
    /// Plain Rust, vectorized only as far as the build's baseline allows.
    Portable,
}

impl Tier {
    pub fn best() -> Tier {
        Tier::available()[0]
    }

    /// Every tier this CPU can run, widest first (detected once).
    pub fn available() -> &'static [Tier] {
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

/// Runs `$body` compiled for the widest of AVX-512, AVX2 + FMA, and the build's baseline that the
/// CPU has ([`Tier::best`]). The body is the same scalar code; only
/// the instructions LLVM may vectorize it to differ.
macro_rules! dispatch {
    ($vis:vis $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                match $crate::isa::Tier::best() {
                    // SAFETY: `Tier::best` detected the features these are compiled for.
                    $crate::isa::Tier::Avx512 => return unsafe { wide($($arg),*) },
                    $crate::isa::Tier::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Tier::Portable => {}
                }
            }
            generic($($arg),*)
        }
    };
}
