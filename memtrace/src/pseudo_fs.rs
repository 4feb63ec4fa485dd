//! Reading the kernel's pseudo-files (cgroupfs, procfs): small text generated on each read.

use std::{fs::File, io, io::Read, path::Path};

/// Room for the whole of nearly every such file in one read (a v1 memory.stat is about 1 KiB).
const FIRST_READ: usize = 4096;

/// The whole text of a pseudo-file, in two `read` calls for most. `std::fs::read_to_string`
/// asks for the file's size first (`statx`, which these files report as 0 or 4096, not their
/// length) and then starts with a 32-byte read and doubles: eight calls for a memory.stat.
/// On a kill the enricher reads about a dozen such files, so this is most of its syscalls.
pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let mut text = String::with_capacity(FIRST_READ);
    // Through `Take`, `read_to_string` has no size hint: no statx or lseek, and no small probe
    // read into a buffer that already has room.
    File::open(path)?.take(u64::MAX).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_longer_than_the_first_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long");
        let long: String = (0..3 * FIRST_READ)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(&path, &long).expect("write");
        assert_eq!(read(&path).expect("read"), long);
        assert_eq!(
            read("/proc/self/comm").expect("read"),
            std::fs::read_to_string("/proc/self/comm").expect("read")
        );
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let e = read("/proc/no-such-file").expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
