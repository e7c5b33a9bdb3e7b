//! Shoal's benchmarks. This crate holds no library code: the criterion
//! benchmarks live in `benches/` (`cargo bench -p shoal-benches`), and the
//! node load harness binary will live here as well.
