//! The integer `#define`s of each kernel source (`cuda/<family>.cu`), read at build time
//! (`build.rs`, [`crate::scan::integer_defines`]): block sizes, tiles and pipeline depths are
//! written once, in the source that uses them, and the launchers take them from here.
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/defines.rs"));
