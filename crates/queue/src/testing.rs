//! Helpers for tests of the queue and of programs that embed it (feature `test-util`).

use std::path::Path;

/// Copies a data directory recursively, as a file-level backup or a volume snapshot would.
/// Panics on any I/O error (tests only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
