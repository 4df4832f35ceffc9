//! TensorBoard event files (`--report-to tensorboard`), written without TensorFlow.
//!
//! An event file is a sequence of TFRecords, each
//! `u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)`,
//! where `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8` (mod 2³²) and CRC-32C is the
//! Castagnoli polynomial. Each record's data is a serialized `tensorflow.Event` protobuf:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! The first record carries `file_version = "brain.Event:2"`; every log entry then becomes one
//! event whose values are its scalars, tagged as Hugging Face's TensorBoard callback tags them
//! (`eval_loss` → `eval/loss`, `loss` → `train/loss`). Files are named as TensorFlow names
//! them, `events.out.tfevents.<unix seconds>.<hostname>.<pid>.0`, and flushed after every
//! event so that a running TensorBoard sees the run live.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The CRC as TFRecord stores it (masked, so that CRCs of data holding CRCs stay robust).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A protobuf field key: `(field number << 3) | wire type`.
fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A serialized `Event`: wall time, step, and either a file version or scalar values.
pub fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(String, f32)],
) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        key(&mut out, 2, 0);
        // int64 is encoded as its two's-complement u64 (negative steps take ten bytes).
        varint(&mut out, step as u64);
    }
    if let Some(v) = file_version {
        bytes_field(&mut out, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::new();
            bytes_field(&mut value, 1, tag.as_bytes());
            key(&mut value, 2, 5);
            value.extend_from_slice(&v.to_le_bytes());
            bytes_field(&mut summary, 1, &value);
        }
        bytes_field(&mut out, 5, &summary);
    }
    out
}

/// Hugging Face's tag for a log key: `eval_x` → `eval/x`, `test_x` → `test/x`, others
/// `train/x` (its `rewrite_logs`).
pub fn tag(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("eval_") {
        format!("eval/{rest}")
    } else if let Some(rest) = key.strip_prefix("test_") {
        format!("test/{rest}")
    } else {
        format!("train/{key}")
    }
}

/// The scalars of one log row (every number but the step), tagged.
pub fn row_scalars(row: &Map<String, Value>) -> Vec<(String, f32)> {
    row.iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| Some((tag(k), v.as_f64()? as f32)))
        .collect()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).to_string();
    if rc != 0 || name.is_empty() {
        "localhost".into()
    } else {
        name.replace(['/', '\\'], "_")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `Mon DD_HH-MM-SS` in UTC from Unix seconds, as HF names its default logging dir
/// (`%b%d_%H-%M-%S`, which it takes in local time).
pub fn run_stamp(unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian, era-based).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{}{:02}_{:02}-{:02}-{:02}",
        MONTHS[(month - 1) as usize],
        day,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// HF's default `logging_dir`: `<output-dir>/runs/<Mon DD_HH-MM-SS>_<hostname>`.
pub fn default_logging_dir(output_dir: &Path) -> PathBuf {
    let now = unix_now() as u64;
    output_dir
        .join("runs")
        .join(format!("{}_{}", run_stamp(now), hostname()))
}

/// An open event file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, starting with the file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the TensorBoard directory {}", dir.display())
        })?;
        let now = unix_now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{}.{}.0",
            now as u64,
            hostname(),
            std::process::id()
        ));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter { file, path };
        w.write_event(&event(now, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(&tfrecord(data))
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// One event with every scalar of a log row, at the row's step.
    pub fn write_row(&mut self, row: &Map<String, Value>) -> Result<()> {
        let step = row.get("step").and_then(Value::as_i64).unwrap_or(0);
        let scalars = row_scalars(row);
        if scalars.is_empty() {
            return Ok(());
        }
        self.write_event(&event(unix_now(), step, None, &scalars))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_check_values() {
        // RFC 3720 B.4: 32 bytes of zeros, of 0xff, and 0..31 ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn run_stamp_is_the_utc_calendar_date() {
        // 2026-12-03 13:35:43 UTC.
        assert_eq!(run_stamp(1_796_304_943), "Dec03_13-35-43");
        assert_eq!(run_stamp(0), "Jan01_00-00-00");
        // 2024-02-29 23:59:59 UTC (a leap day).
        assert_eq!(run_stamp(1_709_251_199), "Feb29_23-59-59");
    }

    #[test]
    fn tags_follow_hugging_face() {
        assert_eq!(tag("eval_loss"), "eval/loss");
        assert_eq!(tag("loss"), "train/loss");
        assert_eq!(tag("learning_rate"), "train/learning_rate");
    }
}
