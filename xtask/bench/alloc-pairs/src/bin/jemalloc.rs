//! Pairs through tikv-jemallocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    alloc_pairs::main();
}
