//! The rayon pool the CPU backend's parallel ops run on.

/// Builds the global rayon pool with the calling thread as its first worker (the pool's size
/// is rayon's default: `RAYON_NUM_THREADS`, else one per core, the calling thread included).
///
/// A parallel op started from a thread outside the pool hands its work to a pool thread and
/// sleeps until it is done: at one thread that is a futex wake-up and two context switches per
/// op, a few percent of a CPU training step (BENCHMARKS.md). Started from a pool worker, the
/// op runs on the calling thread and any other workers join in.
///
/// For a binary's `main`, before any parallel op. The calling thread must stay alive and must
/// not block on work that other threads submit to rayon (it is a worker that only runs jobs
/// while it is itself inside a parallel op). Fails if the global pool already exists.
pub fn use_calling_thread_in_pool() -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
}
