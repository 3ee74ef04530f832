//! Long audio without long memory: an append-only buffer of `f32` that keeps its first
//! [`SPILL_AFTER`] values in memory and moves everything to an unlinked temporary file beyond that.
//!
//! A request's decoded 16-kHz samples (64 KB per second of audio) and its log-mel (32 KB per
//! second) live in these buffers, so a four-hour upload costs the same memory as a five-minute
//! one; the difference goes to the temporary directory (`$TMPDIR`, `/tmp`: the Helm chart mounts
//! an `emptyDir` there), where the kernel deletes the file when the buffer is dropped, even after a
//! crash. Reading back is exact: the bits written are the bits read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Values kept in memory before a buffer moves to a temporary file: 16 MiB, that is 4.4 minutes
/// of 16-kHz samples or 8.7 minutes of an 80-bin log-mel.
pub const SPILL_AFTER: usize = 4 << 20;
/// Values gathered in memory between two writes to the file (1 MiB).
const WRITE_BLOCK: usize = 1 << 18;

/// Bytes written to temporary files by all buffers of this process (a metric).
pub static SPILLED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Buffers that moved to a temporary file (a metric).
pub static SPILLS: AtomicU64 = AtomicU64::new(0);

/// The temporary file could not be created, written or read (a full or missing temporary
/// directory): the service's fault, never the caller's.
#[derive(Debug, thiserror::Error)]
#[error("temporary storage for long audio failed ({0}); check that the temporary directory (TMPDIR, /tmp) is writable and has room")]
pub struct SpillError(#[from] std::io::Error);

/// Random access to a run of samples (or of log-mel values), wherever they are kept.
pub trait Samples: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy values `start..start + out.len()` into `out`; the range must lie within `len()`.
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), SpillError>;
}

impl Samples for &[f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), SpillError> {
        let src = self
            .get(start..start + out.len())
            .ok_or_else(|| out_of_range(start, out.len(), <[f32]>::len(self)))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

impl Samples for Vec<f32> {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), SpillError> {
        self.as_slice().read(start, out)
    }
}

fn out_of_range(start: usize, n: usize, len: usize) -> SpillError {
    SpillError(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("read of {n} values at {start} past the end ({len})"),
    ))
}

#[derive(Debug)]
struct OnDisk {
    file: Mutex<File>,
    /// Values in the file; the rest (up to `len`) wait in `SpillBuffer::tail`.
    written: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct SpillBuffer {
    /// All values while in memory; once spilled, the values not yet written.
    tail: Vec<f32>,
    disk: Option<OnDisk>,
    len: usize,
    /// Spill after this many values (tests lower it).
    limit: usize,
}

impl Default for SpillBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl SpillBuffer {
    pub fn new() -> Self {
        Self::with_limit(SPILL_AFTER)
    }

    /// A buffer that spills after `limit` values.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            tail: Vec::new(),
            disk: None,
            len: 0,
            limit,
        }
    }

    /// A buffer holding `values` (in memory, or spilled when they are more than the limit).
    pub fn from_vec(values: Vec<f32>) -> Result<Self, SpillError> {
        let mut b = Self::new();
        if values.len() <= b.limit {
            b.len = values.len();
            b.tail = values;
        } else {
            b.push(&values)?;
        }
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All the values, in memory (for short audio and tests).
    pub fn to_vec(&self) -> Result<Vec<f32>, SpillError> {
        let mut v = vec![0f32; self.len];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// Whether the values have moved to a temporary file.
    pub fn is_spilled(&self) -> bool {
        self.disk.is_some()
    }

    pub fn push(&mut self, values: &[f32]) -> Result<(), SpillError> {
        self.tail.extend_from_slice(values);
        self.len += values.len();
        match &mut self.disk {
            None if self.len > self.limit => {
                let file = tempfile::tempfile()?;
                SPILLS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    values = self.len,
                    "long audio: buffer moved to a temporary file"
                );
                self.disk = Some(OnDisk {
                    file: Mutex::new(file),
                    written: 0,
                });
                self.flush()
            }
            Some(_) if self.tail.len() >= WRITE_BLOCK => self.flush(),
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SpillError> {
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(self.tail.len().min(WRITE_BLOCK) * 4);
        let file = disk.file.get_mut().unwrap_or_else(|p| p.into_inner());
        file.seek(SeekFrom::Start(disk.written as u64 * 4))?;
        for block in self.tail.chunks(WRITE_BLOCK) {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|v| v.to_le_bytes()));
            file.write_all(&bytes)?;
        }
        SPILLED_BYTES.fetch_add(self.tail.len() as u64 * 4, Ordering::Relaxed);
        disk.written += self.tail.len();
        self.tail = Vec::new();
        Ok(())
    }
}

impl Samples for SpillBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), SpillError> {
        let end = start + out.len();
        if end > self.len {
            return Err(out_of_range(start, out.len(), self.len));
        }
        let Some(disk) = &self.disk else {
            out.copy_from_slice(&self.tail[start..end]);
            return Ok(());
        };
        // From the file: values below `written`; from the tail: the rest.
        let from_file = disk.written.clamp(start, end) - start;
        if from_file > 0 {
            let mut bytes = vec![0u8; from_file * 4];
            {
                let mut file = disk.file.lock().unwrap_or_else(|p| p.into_inner());
                file.seek(SeekFrom::Start(start as u64 * 4))?;
                file.read_exact(&mut bytes)?;
            }
            for (o, b) in out[..from_file].iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        if from_file < out.len() {
            // what is left starts at or after `written`
            let tail_start = start + from_file - disk.written;
            let rest = out.len() - from_file;
            out[from_file..].copy_from_slice(&self.tail[tail_start..tail_start + rest]);
        }
        Ok(())
    }
}

/// Visit `src` in order, `block` values at a time (the last piece may be shorter).
pub fn for_each_block(
    src: &dyn Samples,
    block: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<(), SpillError> {
    let mut buf = vec![0f32; block.max(1).min(src.len())];
    let mut at = 0;
    while at < src.len() {
        let n = buf.len().min(src.len() - at);
        src.read(at, &mut buf[..n])?;
        f(at, &buf[..n]);
        at += n;
    }
    Ok(())
}

/// Sample-by-sample access to a [`Samples`] for code that reads mostly forwards (frame by frame,
/// each frame reaching a little back into the previous one): it keeps one block loaded and
/// reloads from the index asked for (less `lookback`) when a read falls outside it. Past the end
/// it reads zeros. A failed load reads zeros too and is reported by [`finish`](Self::finish).
pub struct ForwardReader<'a> {
    src: &'a dyn Samples,
    lookback: usize,
    block: std::cell::RefCell<(usize, Vec<f32>)>,
    error: std::cell::RefCell<Option<SpillError>>,
}

impl<'a> ForwardReader<'a> {
    const BLOCK: usize = 1 << 16;

    /// `lookback` is kept below half a block, so a reload always covers the index asked for.
    pub fn new(src: &'a dyn Samples, lookback: usize) -> Self {
        Self {
            src,
            lookback: lookback.min(Self::BLOCK / 2),
            block: std::cell::RefCell::new((0, Vec::new())),
            error: std::cell::RefCell::new(None),
        }
    }

    pub fn get(&self, i: usize) -> f32 {
        if i >= self.src.len() {
            return 0.0;
        }
        let mut b = self.block.borrow_mut();
        if i < b.0 || i >= b.0 + b.1.len() {
            let lo = i.saturating_sub(self.lookback);
            let n = Self::BLOCK.min(self.src.len() - lo);
            b.1.resize(n, 0.0);
            b.0 = lo;
            if let Err(e) = self.src.read(lo, &mut b.1) {
                b.1.iter_mut().for_each(|v| *v = 0.0);
                self.error.borrow_mut().get_or_insert(e);
            }
        }
        b.1[i - b.0]
    }

    /// Whether every load succeeded.
    pub fn finish(self) -> Result<(), SpillError> {
        match self.error.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37).sin() * 1e3 + i as f32)
            .collect()
    }

    #[test]
    fn reads_back_every_range_exactly_across_memory_file_and_tail() {
        let v = values(10_000);
        for limit in [usize::MAX, 100, 0] {
            let mut b = SpillBuffer::with_limit(limit);
            for piece in v.chunks(333) {
                b.push(piece).unwrap();
            }
            assert_eq!(b.len(), v.len());
            assert_eq!(b.is_spilled(), limit < v.len());
            for (start, n) in [
                (0, 10_000),
                (0, 1),
                (99, 7),
                (4_000, 3_333),
                (9_999, 1),
                (5, 0),
            ] {
                let mut out = vec![0f32; n];
                b.read(start, &mut out).unwrap();
                assert!(
                    out.iter()
                        .zip(&v[start..start + n])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "limit {limit}, range {start}+{n}"
                );
            }
            let mut out = vec![0f32; 2];
            assert!(b.read(9_999, &mut out).is_err(), "past the end is an error");
        }
    }

    #[test]
    fn a_spilled_buffer_keeps_little_in_memory() {
        let mut b = SpillBuffer::with_limit(1000);
        for _ in 0..(4 * WRITE_BLOCK / 1000) {
            b.push(&[1.5; 1000]).unwrap();
        }
        assert!(b.is_spilled());
        assert!(
            b.tail.capacity() <= 2 * WRITE_BLOCK,
            "tail holds {}",
            b.tail.capacity()
        );
        let mut seen = 0usize;
        for_each_block(&b, 4096, |at, x| {
            assert_eq!(at, seen);
            assert!(x.iter().all(|&v| v == 1.5));
            seen += x.len();
        })
        .unwrap();
        assert_eq!(seen, b.len());
    }

    #[test]
    fn forward_reader_reads_any_index_and_zeros_past_the_end() {
        let v = values(200_000);
        let r = ForwardReader::new(&v, 64);
        for i in (0..200_000)
            .step_by(997)
            .chain([199_999, 70_000, 65_535, 65_536, 3])
        {
            assert_eq!(r.get(i).to_bits(), v[i].to_bits(), "index {i}");
        }
        assert_eq!(r.get(200_000), 0.0);
        r.finish().unwrap();
    }
}
