//! `ask` and `eval` pointed at a run's adapter answer as that run trained: flags left at their
//! defaults take the run's values from the adapter's `training_args.json` (max length,
//! truncation policy, data format), so the prompts are cut and formatted as in training. A
//! flag given on the command line always wins; each adopted value is reported on stderr.

use crate::run_record::read_run_args;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The saved flags of the adapter's run, and which flags the user gave.
pub struct RunDefaults<'a> {
    path: PathBuf,
    saved: Map<String, Value>,
    explicit: &'a BTreeSet<String>,
}

impl<'a> RunDefaults<'a> {
    /// `None` without an adapter, or for an adapter that no `trainer train` run wrote.
    pub fn of(adapter: Option<&Path>, explicit: &'a BTreeSet<String>) -> Option<Self> {
        let (path, saved) = read_run_args(adapter?)?;
        Some(RunDefaults {
            path,
            saved,
            explicit,
        })
    }

    fn note(&self, id: &str, shown: &str) {
        eprintln!(
            "note: --{} {shown} as the adapter's run trained ({}); give the flag to override",
            id.replace('_', "-"),
            self.path.display()
        );
    }

    /// Sets `field` to the run's value of flag `id` unless the flag was given.
    pub fn usize(&self, id: &str, field: &mut usize) {
        if self.explicit.contains(id) {
            return;
        }
        if let Some(v) = self.saved.get(id).and_then(Value::as_u64) {
            if v as usize != *field {
                *field = v as usize;
                self.note(id, &v.to_string());
            }
        }
    }

    /// As [`Self::usize`] for a string flag.
    pub fn string(&self, id: &str, field: &mut String) {
        if self.explicit.contains(id) {
            return;
        }
        if let Some(v) = self.saved.get(id).and_then(Value::as_str) {
            if v != field {
                *field = v.to_string();
                self.note(id, v);
            }
        }
    }
}
