//! The kernel harness: every kernel on every tier it has a version for, against the portable
//! version or an f64 reference. A tier this CPU lacks is reported SKIPPED, never passed; the
//! table is printed (`cargo test -p whisperd-kernels harness -- --nocapture`).

use crate::isa::Tier;

struct Kernel {
    name: &'static str,
    /// The tiers with a version of their own (others run the next narrower one).
    versions: &'static [Tier],
    /// Panics (an assertion) where the version on `tier` is wrong.
    check: fn(Tier),
}

const WRITTEN_ONCE: &[Tier] = &[Tier::Portable, Tier::Avx2, Tier::Avx512];

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "rowmatmul f16/f32",
        versions: WRITTEN_ONCE,
        check: crate::rowmatmul::tests::float_weights,
    },
    Kernel {
        name: "rowmatmul q8",
        versions: WRITTEN_ONCE,
        check: crate::rowmatmul::tests::q8_weights,
    },
    Kernel {
        name: "intgemm (encoder q8)",
        versions: &[Tier::Portable, Tier::Avx2, Tier::Avx512Bf16],
        check: crate::intgemm::tests::int_linear,
    },
    Kernel {
        name: "query audio f32 / cache",
        versions: WRITTEN_ONCE,
        check: crate::query::tests::audio_f32_and_cache,
    },
    Kernel {
        name: "query audio f16",
        versions: WRITTEN_ONCE,
        check: crate::query::tests::audio_f16,
    },
    Kernel {
        name: "softmax rows, gelu",
        versions: WRITTEN_ONCE,
        check: crate::elementwise::tests::softmax_and_gelu,
    },
    Kernel {
        name: "log_sum_exp",
        versions: WRITTEN_ONCE,
        check: crate::elementwise::tests::log_sum_exp_f64,
    },
    Kernel {
        name: "max_value",
        versions: WRITTEN_ONCE,
        check: crate::elementwise::tests::max_value_is_the_fold,
    },
    Kernel {
        name: "lstm_cell",
        versions: WRITTEN_ONCE,
        check: crate::elementwise::tests::lstm_cell_f64,
    },
    Kernel {
        name: "exp_to_bf16",
        versions: &[Tier::Portable, Tier::Avx512Bf16],
        check: crate::elementwise::tests::exp_to_bf16_softmax,
    },
    Kernel {
        name: "f32 -> bf16 rows",
        versions: &[Tier::Portable, Tier::Avx512Bf16],
        check: crate::bf16::tests::row_conversion,
    },
    Kernel {
        name: "fused attention f32",
        versions: &[Tier::Avx2],
        check: fused_attention,
    },
    Kernel {
        name: "fused attention int16",
        versions: &[Tier::Avx2],
        check: int16_attention,
    },
    Kernel {
        name: "bf16 matmul (bf16.rs)",
        versions: &[Tier::Avx512Bf16, Tier::Amx],
        check: crate::bf16::tests::tiles,
    },
    Kernel {
        name: "bf16 attention",
        versions: &[Tier::Avx512Bf16, Tier::Amx],
        check: amx_attention,
    },
];

/// Multi-head attention in f64: `qkv` `(b, t, 3·d)` → `(b, t, d)`.
fn reference_attention(qkv: &[f32], b: usize, t: usize, d: usize, heads: usize) -> Vec<f32> {
    let dh = d / heads;
    let mut y = vec![0f32; b * t * d];
    for w in 0..b {
        let at = |j: usize, part: usize, h: usize, c: usize| {
            qkv[(w * t + j) * 3 * d + part * d + h * dh + c] as f64
        };
        for h in 0..heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| (0..dh).map(|c| at(i, 0, h, c) * at(j, 1, h, c)).sum())
                    .collect();
                let max = scores.iter().fold(f64::NEG_INFINITY, |a, &s| a.max(s));
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..dh {
                    let v: f64 = (0..t).map(|j| e[j] * at(j, 2, h, c)).sum();
                    y[(w * t + i) * d + h * dh + c] = (v / sum) as f32;
                }
            }
        }
    }
    y
}

/// `(b, t, heads)` with partial query blocks and key tiles; q scaled up so the softmax is far
/// from uniform. Returns the largest difference from the f64 reference.
fn attention_diff(run: impl Fn(&[f32], usize, usize, usize, usize, &mut [f32])) -> f32 {
    let mut worst = 0f32;
    for (b, t, heads) in [(2, 37, 2), (1, 100, 3)] {
        let d = heads * 64;
        let mut qkv = crate::test_values(b * t * 3 * d, t as u64);
        for row in qkv.chunks_exact_mut(3 * d) {
            row[..d].iter_mut().for_each(|q| *q *= 4.0);
        }
        let want = reference_attention(&qkv, b, t, d, heads);
        let mut got = vec![f32::NAN; b * t * d];
        run(&qkv, b, t, d, heads, &mut got);
        for (g, w) in got.iter().zip(&want) {
            worst = worst
                .max((g - w).abs())
                .max(if g.is_nan() { f32::INFINITY } else { 0.0 });
        }
    }
    worst
}

fn fused_attention(tier: Tier) {
    assert_eq!(tier, Tier::Avx2, "the fused attention has one version");
    let diff = attention_diff(crate::attention::attention);
    // Outputs are averages of values in [-0.5, 0.5]: only summation order differs.
    assert!(diff < 1e-5, "max diff {diff}");
}

fn int16_attention(tier: Tier) {
    assert_eq!(tier, Tier::Avx2, "the int16 attention has one version");
    let diff = attention_diff(crate::attention::attention_int16);
    // 13-bit queries and keys, 14-bit probabilities and 12-bit values move the averages by
    // ~3e-4 (bf16 moves them by ~1e-2).
    assert!(diff < 1e-3, "max diff {diff}");
}

fn amx_attention(tier: Tier) {
    let diff = attention_diff(|qkv, b, t, d, heads, y| {
        crate::bf16::attention_on(tier, qkv, b, t, d, heads, y)
    });
    // bf16 scores and weights move the averages by ~1e-2.
    assert!(diff < 3e-2, "max diff {diff}");
}

#[test]
fn every_kernel_on_every_tier() {
    let width = KERNELS.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let mut table = format!("{:width$}", "kernel \\ tier");
    for tier in Tier::ALL {
        table += &format!(" | {:11}", tier.name());
    }
    table += "\n";
    let (mut passed, mut skipped, mut failed) = (0, 0, Vec::new());
    for k in KERNELS {
        table += &format!("{:width$}", k.name);
        for tier in Tier::ALL {
            let cell = if !k.versions.contains(&tier) {
                "-"
            } else if !tier.is_available() {
                skipped += 1;
                "SKIPPED"
            } else if std::panic::catch_unwind(|| (k.check)(tier)).is_ok() {
                passed += 1;
                "pass"
            } else {
                failed.push(format!("{} on {}", k.name, tier.name()));
                "FAIL"
            };
            table += &format!(" | {cell:11}");
        }
        table += "\n";
    }
    let lacks: Vec<&str> = Tier::ALL
        .iter()
        .filter(|t| !t.is_available())
        .map(|t| t.name())
        .collect();
    println!(
        "{table}{passed} passed, {skipped} SKIPPED (this CPU lacks: {}), {} failed; \
         '-' = no version of its own (the next narrower one runs)",
        if lacks.is_empty() {
            "nothing".to_string()
        } else {
            lacks.join(", ")
        },
        failed.len()
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(passed > 0, "no kernel ran");
}
