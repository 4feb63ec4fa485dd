//! Freed heap given back to the kernel. glibc keeps what is freed mapped and resident unless
//! it lies at the top of the heap: start-up parses the kernel's BTF twice (tens of MB, freed
//! at once), and a storm allocates per kill, so the daemon's RSS stayed at its high-water mark
//! (53 MB after a 30 s storm, 20 MB once trimmed). `malloc_trim` returns the free pages of
//! every arena (madvise), wherever they lie.

use std::time::{Duration, Instant};

/// How often the daemon trims: the cost is a walk over glibc's free lists (well under a
/// millisecond here), and RSS follows a storm's end within this.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims every [`TRIM_EVERY`].
#[derive(Debug)]
pub struct HeapTrim {
    last: Instant,
}

impl HeapTrim {
    /// Trims at once (after start-up), then every [`TRIM_EVERY`] from [`Self::tick`].
    pub fn start() -> Self {
        release_free_heap();
        Self { last: Instant::now() }
    }

    pub fn tick(&mut self, now: Instant) {
        if now.duration_since(self.last) >= TRIM_EVERY {
            self.last = now;
            release_free_heap();
        }
    }
}

/// Returns free heap pages to the kernel (glibc; elsewhere nothing to do).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    {
        let t0 = Instant::now();
        // SAFETY: malloc_trim only releases memory the allocator holds free.
        unsafe { libc::malloc_trim(0) };
        log::trace!("malloc_trim: {:?}", t0.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freed burst of allocations is given back: RSS after the trim is well below RSS with
    /// the freed memory still held (glibc keeps freed chunks below the heap top resident).
    #[test]
    #[cfg(target_env = "gnu")]
    fn freed_heap_leaves_rss() {
        fn rss_kb() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        }
        // 40 MB in small chunks (below the mmap threshold: on the heap), touched; one kept at
        // the top so the freed ones cannot be returned by shrinking the heap. RSS is the whole
        // test process's: up to three tries, in case another test grows at the same moment.
        let freed = || {
            let mut chunks: Vec<Vec<u8>> = (0..10_000).map(|_| vec![1u8; 4000]).collect();
            let pin = vec![1u8; 4000];
            chunks.clear();
            chunks.shrink_to_fit();
            let before = rss_kb();
            release_free_heap();
            let after = rss_kb();
            drop(pin);
            (before, after)
        };
        let tries: Vec<(u64, u64)> = (0..3).map(|_| freed()).collect();
        assert!(
            tries.iter().any(|(before, after)| after + 20_000 < *before),
            "RSS kB (before the trim, after): {tries:?}"
        );
    }
}
