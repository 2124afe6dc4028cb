//! The check each binary's unit tests make that its jemalloc runs with `hookrelay_common::allocator::JEMALLOC_OPTIONS`
//! (the options symbol is exported per binary, so each binary's own test process is where it can be read back).

use tikv_jemalloc_ctl::{Access as _, AsName as _};

/// Panics unless this process's jemalloc runs with one arena, a one-second dirty decay and no muzzy decay, as asked
/// and as arena 0 applies it.
pub fn assert_jemalloc_options_in_force() {
    let arenas: u32 = b"opt.narenas\0".name().read().expect("opt.narenas");
    let dirty: isize = b"opt.dirty_decay_ms\0".name().read().expect("opt.dirty_decay_ms");
    let muzzy: isize = b"opt.muzzy_decay_ms\0".name().read().expect("opt.muzzy_decay_ms");
    let arena_zero: isize = b"arena.0.dirty_decay_ms\0".name().read().expect("arena.0.dirty_decay_ms");
    assert_eq!((arenas, dirty, muzzy, arena_zero), (1, 1000, 0, 1000));
}
