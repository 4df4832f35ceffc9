//! One writer per output directory: an advisory `flock` on `<output-dir>/trainer.lock`,
//! holding the writer's pid.
//!
//! Two runs writing checkpoints into one directory would rotate each other's checkpoints away
//! and interleave `metrics.jsonl`. The kernel releases a `flock` when its holder exits, however
//! it exits (`kill -9` included), so a lock file left behind by a dead process never blocks:
//! only a live holder does, and the error names its pid.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the output directory.
pub const LOCK_FILE: &str = "trainer.lock";

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    pub path: PathBuf,
}

fn flock_exclusive_nonblocking(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock of `output_dir` (which must exist) for this process, or fails naming the
/// live process that holds it.
pub fn lock_output_dir(output_dir: &Path) -> Result<OutputLock> {
    let path = output_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let got = flock_exclusive_nonblocking(&file)
        .with_context(|| format!("cannot lock {}", path.display()))?;
    if !got {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("another process ({holder})")
        };
        bail!(
            "{} is in use: {who} is writing to it (lock {}); wait for it to finish, stop it, \
             or choose another --output-dir",
            output_dir.display(),
            path.display()
        );
    }
    // Ours now: whatever pid a dead holder left is replaced.
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "pid {}", std::process::id())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.flush()?;
    Ok(OutputLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_a_stale_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A lock file left by a process that no longer exists.
        std::fs::write(dir.path().join(LOCK_FILE), "pid 999999999\n").unwrap();
        let held = lock_output_dir(dir.path()).expect("a stale lock file does not block");
        let text = std::fs::read_to_string(&held.path).unwrap();
        assert_eq!(text.trim(), format!("pid {}", std::process::id()));
        // flock locks belong to the open file description, so a second open in this process
        // conflicts just as another process would.
        let e = lock_output_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("is in use"),
            "{e}"
        );
        drop(held);
        lock_output_dir(dir.path()).expect("released on drop");
    }
}
