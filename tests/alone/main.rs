//! Integration tests that measure the machine's CPU and so must not share it with other tests:
//! cargo runs test binaries one after another, so nothing in `it` runs beside these. Keep one
//! test here (`./scripts/test` passes `--test-threads=2` to every binary) or serialise them.
//! Same real daemons and models as `it`.

#[path = "../it/support/mod.rs"]
mod support;
mod threads;
