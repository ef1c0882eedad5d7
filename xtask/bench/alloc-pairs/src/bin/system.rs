//! Pairs through the default allocator (the shim ends in libc's malloc).
fn main() {
    alloc_pairs::main();
}
