//! The options both binaries give jemalloc, their global allocator.
//!
//! jemalloc reads them at its first allocation, before `main`, from a C string it looks up under the symbol
//! `_rjem_malloc_conf`; each binary exports that symbol pointing at [`JEMALLOC_OPTIONS`] with
//! [`export_jemalloc_options!`]. `_RJEM_MALLOC_CONF` in the environment is read after it, so an operator can still
//! override any of them.

/// The options, NUL-terminated for C (what each saves is in docs/operating.md):
/// - `narenas:1`: jemalloc makes 4 arenas per CPU of the *node* (it does not see a pod's CPU limit), and memory freed
///   in one arena is reused only there. A dozen threads allocating small pieces are served by their thread caches,
///   so one arena is rarely contended and holds less memory for the same CPU.
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back to the system after a second instead of ten. sled
///   copies a page on every write, so under load the agent frees hundreds of MB a second; no delay at all slows
///   queueing.
pub const JEMALLOC_OPTIONS: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Exports [`JEMALLOC_OPTIONS`] as the symbol jemalloc reads its options from; invoke it once, at a binary's root,
/// next to its `#[global_allocator]`. Exporting a symbol is `unsafe` (nothing else may define it), the one place the
/// workspace allows it.
#[macro_export]
macro_rules! export_jemalloc_options {
    () => {
        #[allow(unsafe_code)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static JEMALLOC_OPTIONS: &[u8; $crate::allocator::JEMALLOC_OPTIONS.len()] = $crate::allocator::JEMALLOC_OPTIONS;
    };
}
