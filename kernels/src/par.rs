//! Filling large outputs in parallel.

/// A vector of `len` values built in parallel, `chunk` at a time: each task gets its chunk zeroed
/// and `fill`s it (a chunk's index is its position / `chunk`). For the encoder's large outputs:
/// `vec![0.0; n]` zeroed ~9 MB in the calling thread while the other core idled (~5 % of a
/// window); here each core zeroes its own chunk just before writing it, while it is in cache.
pub fn par_filled<T, F>(len: usize, chunk: usize, fill: F) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, zeroed(c)));
    // SAFETY: the chunks cover the first `len` elements and `zeroed` initialized each (had a
    // task panicked, the panic would have left through `for_each` before this line).
    unsafe { v.set_len(len) };
    v
}

/// Writes `T::default()` to every element of `c` and returns it as initialized.
pub fn zeroed<T: Copy + Default>(c: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    for x in c.iter_mut() {
        x.write(T::default());
    }
    // SAFETY: every element was initialized just above; MaybeUninit<T> has T's layout.
    unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<T>(), c.len()) }
}

#[cfg(test)]
mod tests {
    /// Every chunk reaches `fill` once, with its index, already zeroed; a partial last chunk too.
    #[test]
    fn par_filled_zeroes_and_fills_each_chunk() {
        let v: Vec<u32> = super::par_filled(1000, 64, |i, c| {
            assert!(c.iter().all(|&x| x == 0));
            if i % 2 == 0 {
                for (j, x) in c.iter_mut().enumerate() {
                    *x = (i * 64 + j) as u32 + 1;
                }
            }
        });
        assert_eq!(v.len(), 1000);
        for (p, &x) in v.iter().enumerate() {
            let want = if (p / 64) % 2 == 0 { p as u32 + 1 } else { 0 };
            assert_eq!(x, want, "position {p}");
        }
    }
}
