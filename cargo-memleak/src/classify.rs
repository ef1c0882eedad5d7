//! Lost or reachable: classifies outstanding blocks the way memcheck and LeakSanitizer do, by
//! scanning memory for pointers.
//!
//! Roots (writable segments of loaded objects, live threads' stacks and registers, TLS) are
//! given as address ranges; their aligned words, and then the words of every block found
//! reachable, are looked up among the outstanding blocks. A word pointing at a block's start
//! or inside it marks the block reachable. Blocks never marked are lost: **definitely** when no
//! other lost block points at them, **indirectly** when one does; in an unreachable cycle the
//! first block found stays definite and the rest are indirect.
//!
//! Why each is lost comes from the same scan: every indirectly lost block is *held* by the
//! definitely lost block whose structure it belongs to (the first, in address order, that
//! reaches it), and the lost blocks that only point at each other form *cycles* (strongly
//! connected components of two blocks or more, or one block pointing into itself), each with
//! the first two words of its blocks (where `Rc` and `Arc` keep their counts).
//!
//! Invariants: memory that cannot be read never aborts the classification; it is counted
//! (regions and bytes) so the caller can mark the result incomplete. The result is independent
//! of the order roots are given in.

use std::ops::Range;

use serde::Serialize;

/// What memcheck would call a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    DefinitelyLost,
    IndirectlyLost,
    StillReachable,
}

/// An outstanding block: `size` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
}

/// Reads the traced process's memory.
pub trait Memory {
    /// Fills `buf` from `addr`; `false` when (part of) the range cannot be read.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    /// The parts of `range` meant to be read: guard pages and other mappings without read
    /// permission are left out (they hold no pointers), anything else stays in, so that a
    /// range which vanished is read, fails and is counted.
    fn clip(&self, range: Range<u64>, parts: &mut Vec<Range<u64>>) {
        parts.push(range);
    }
}

/// Where pointers to blocks may be kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roots {
    /// Memory whose every aligned word counts: data segments, stacks, thread-local storage.
    pub regions: Vec<Range<u64>>,
    /// The allocator's own data, where only a pointer to a block's start counts: its
    /// bookkeeping (glibc's arena `top`, its bins) holds chunk headers, which fall inside the
    /// block before them.
    pub allocator_regions: Vec<Range<u64>>,
    /// Single words: register values of stopped threads, and the like.
    pub words: Vec<u64>,
    /// Outstanding blocks that are roots themselves (indices into the blocks): what the
    /// dynamic linker allocated, which only its own bookkeeping reaches.
    pub blocks: Vec<usize>,
}

/// The category of every block, in the order the blocks were given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    pub categories: Vec<Category>,
    /// For each indirectly lost block, the definitely lost block holding it (an index into
    /// the blocks); `None` for the others.
    pub holders: Vec<Option<usize>>,
    /// The lost blocks that point at each other in cycles, largest first.
    pub cycles: Vec<Cycle>,
    /// Ranges (roots or blocks) that could not be read, and their bytes.
    pub unreadable_regions: u64,
    pub unreadable_bytes: u64,
}

/// Lost blocks that only point at each other (a strongly connected component of the pointers
/// among lost blocks): two or more, or one pointing into itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cycle {
    /// Indices into the blocks, in address order.
    pub blocks: Vec<usize>,
    /// The first two words of each of them, in the same order (`None` for a block shorter
    /// than two words, or unreadable): an `Rc` or `Arc` allocation starts with its strong and
    /// weak counts.
    pub heads: Vec<Option<[u64; 2]>>,
}

const WORD: u64 = 8;
/// Roots are read in chunks this large (thread stacks and data segments can be big).
const CHUNK: u64 = 64 * 1024;

/// Classifies `blocks` (non-overlapping) given the `roots`.
pub fn classify(blocks: &[Block], roots: &Roots, memory: &mut impl Memory) -> Classification {
    let index = BlockIndex::new(blocks);
    let mut scanner = Scanner {
        index: &index,
        memory,
        unreadable_regions: 0,
        unreadable_bytes: 0,
        buffer: Vec::new(),
        parts: Vec::new(),
    };

    // Mark: everything reachable from the roots, then from reachable blocks.
    let mut reachable = vec![false; blocks.len()];
    let mut work = Vec::new();
    let mut mark = |block: usize| {
        if !reachable[block] {
            reachable[block] = true;
            work.push(block);
        }
    };
    for &block in &roots.blocks {
        if block < blocks.len() {
            mark(block);
        }
    }
    for &value in &roots.words {
        if let Some(block) = index.find(value) {
            mark(block);
        }
    }
    for root in &roots.regions {
        scanner.scan(root.clone(), Target::Anywhere, &mut mark);
    }
    for root in &roots.allocator_regions {
        scanner.scan(root.clone(), Target::Start, &mut mark);
    }
    while let Some(block) = work.pop() {
        scanner.scan(index.range(block), Target::Anywhere, |found| {
            if !reachable[found] {
                reachable[found] = true;
                work.push(found);
            }
        });
    }

    // Lost blocks: each one not yet reached from another lost block leads; everything it
    // reaches is indirect, including earlier leaders it reaches.
    let mut categories: Vec<Option<Category>> = reachable
        .iter()
        .map(|&r| r.then_some(Category::StillReachable))
        .collect();
    // Each lost block is scanned once, here: the pointers among lost blocks are kept.
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for leader in index.by_address() {
        if categories[leader].is_some() {
            continue;
        }
        categories[leader] = Some(Category::DefinitelyLost);
        let mut work = vec![leader];
        while let Some(block) = work.pop() {
            scanner.scan(index.range(block), Target::Anywhere, |found| {
                if categories[found] != Some(Category::StillReachable) {
                    edges.push((block, found));
                }
                if found == leader {
                    return;
                }
                match categories[found] {
                    None => {
                        categories[found] = Some(Category::IndirectlyLost);
                        work.push(found);
                    }
                    Some(Category::DefinitelyLost) => {
                        // An earlier leader reached from this one: it is part of this
                        // structure. Its own reach was already marked indirect.
                        categories[found] = Some(Category::IndirectlyLost);
                    }
                    Some(_) => {}
                }
            });
        }
    }

    let categories: Vec<Category> = categories
        .into_iter()
        .map(|category| category.unwrap_or(Category::DefinitelyLost))
        .collect();
    let graph = LostGraph::new(blocks.len(), edges);
    let holders = graph.holders(&categories, index.by_address());
    let mut cycles: Vec<Cycle> = graph
        .cycles(index.by_address())
        .into_iter()
        .map(|mut members| {
            members.sort_by_key(|&block| blocks[block].addr);
            let heads = members
                .iter()
                .map(|&block| {
                    let mut head = [0u8; 16];
                    (blocks[block].size >= 16 && scanner.memory.read(blocks[block].addr, &mut head))
                        .then(|| {
                            let (first, second) = head.split_at(8);
                            [
                                u64::from_ne_bytes(first.try_into().expect("8 bytes")),
                                u64::from_ne_bytes(second.try_into().expect("8 bytes")),
                            ]
                        })
                })
                .collect();
            Cycle {
                blocks: members,
                heads,
            }
        })
        .collect();
    cycles.sort_by_key(|cycle| {
        let bytes: u64 = cycle.blocks.iter().map(|&block| blocks[block].size).sum();
        (
            std::cmp::Reverse(bytes),
            cycle.blocks.first().map(|&b| blocks[b].addr),
        )
    });

    Classification {
        categories,
        holders,
        cycles,
        unreadable_regions: scanner.unreadable_regions,
        unreadable_bytes: scanner.unreadable_bytes,
    }
}

/// The pointers among lost blocks, as adjacency lists.
struct LostGraph {
    /// `next[start[block]..start[block + 1]]`: the blocks `block` points into.
    start: Vec<usize>,
    next: Vec<usize>,
    /// Blocks pointing into themselves.
    self_pointing: Vec<bool>,
}

impl LostGraph {
    fn new(blocks: usize, mut edges: Vec<(usize, usize)>) -> Self {
        edges.sort_unstable();
        edges.dedup();
        let mut start = vec![0; blocks + 1];
        let mut self_pointing = vec![false; blocks];
        for &(from, to) in &edges {
            start[from + 1] += 1;
            self_pointing[from] |= from == to;
        }
        for block in 0..blocks {
            start[block + 1] += start[block];
        }
        Self {
            start,
            next: edges.into_iter().map(|(_, to)| to).collect(),
            self_pointing,
        }
    }

    fn successors(&self, block: usize) -> &[usize] {
        &self.next[self.start[block]..self.start[block + 1]]
    }

    /// The definitely lost block holding each indirectly lost one: the first definitely lost
    /// block, in `order`, that reaches it.
    fn holders(
        &self,
        categories: &[Category],
        order: impl Iterator<Item = usize>,
    ) -> Vec<Option<usize>> {
        let mut holders = vec![None; categories.len()];
        for leader in order.filter(|&block| categories[block] == Category::DefinitelyLost) {
            let mut work = vec![leader];
            while let Some(block) = work.pop() {
                for &found in self.successors(block) {
                    if categories[found] == Category::IndirectlyLost && holders[found].is_none() {
                        holders[found] = Some(leader);
                        work.push(found);
                    }
                }
            }
        }
        holders
    }

    /// The strongly connected components that are cycles (Tarjan's algorithm, iterative: a
    /// lost list of a million nodes must not overflow the stack), starting in `order`.
    fn cycles(&self, order: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
        const UNSEEN: usize = usize::MAX;
        let nodes = self.self_pointing.len();
        let mut number = vec![UNSEEN; nodes];
        let mut low = vec![0; nodes];
        let mut on_stack = vec![false; nodes];
        let mut stack = Vec::new();
        let mut cycles = Vec::new();
        let mut counter = 0;
        // (node, how many of its successors were visited)
        let mut calls: Vec<(usize, usize)> = Vec::new();
        for root in order {
            if number[root] != UNSEEN || self.successors(root).is_empty() {
                continue;
            }
            calls.push((root, 0));
            number[root] = counter;
            low[root] = counter;
            counter += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (node, ref mut visited)) = calls.last_mut() {
                if let Some(&next) = self.successors(node).get(*visited) {
                    *visited += 1;
                    if number[next] == UNSEEN {
                        number[next] = counter;
                        low[next] = counter;
                        counter += 1;
                        stack.push(next);
                        on_stack[next] = true;
                        calls.push((next, 0));
                    } else if on_stack[next] {
                        low[node] = low[node].min(number[next]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    low[parent] = low[parent].min(low[node]);
                }
                if low[node] == number[node] {
                    let mut component = Vec::new();
                    while let Some(member) = stack.pop() {
                        on_stack[member] = false;
                        component.push(member);
                        if member == node {
                            break;
                        }
                    }
                    if component.len() > 1 || self.self_pointing[node] {
                        cycles.push(component);
                    }
                }
            }
        }
        cycles
    }
}

/// Blocks sorted by address, for "which block contains this word" lookups.
struct BlockIndex<'a> {
    blocks: &'a [Block],
    /// Indices into `blocks`, by address.
    sorted: Vec<usize>,
    /// The span from the lowest block to the end of the highest: most words (small numbers,
    /// code and data addresses) fall outside it and need no search.
    span: Range<u64>,
}

impl<'a> BlockIndex<'a> {
    fn new(blocks: &'a [Block]) -> Self {
        let mut sorted: Vec<usize> = (0..blocks.len()).collect();
        sorted.sort_by_key(|&i| blocks[i].addr);
        let span = match (sorted.first(), sorted.last()) {
            (Some(&first), Some(&last)) => {
                let Block { addr, size } = blocks[last];
                blocks[first].addr..addr.saturating_add(size.max(1))
            }
            _ => 0..0,
        };
        Self {
            blocks,
            sorted,
            span,
        }
    }

    fn by_address(&self) -> impl Iterator<Item = usize> + '_ {
        self.sorted.iter().copied()
    }

    fn range(&self, block: usize) -> Range<u64> {
        let Block { addr, size } = self.blocks[block];
        addr..addr.saturating_add(size)
    }

    /// The block containing `value` (a zero-sized block contains its own address).
    fn find(&self, value: u64) -> Option<usize> {
        if !self.span.contains(&value) {
            return None;
        }
        let after = self
            .sorted
            .partition_point(|&i| self.blocks[i].addr <= value);
        let candidate = *self.sorted.get(after.checked_sub(1)?)?;
        let Block { addr, size } = self.blocks[candidate];
        (value - addr < size.max(1)).then_some(candidate)
    }
}

/// Which pointers count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A pointer to a block's start or inside it.
    Anywhere,
    /// A pointer to a block's start only.
    Start,
}

struct Scanner<'i, 'm, M: Memory> {
    index: &'i BlockIndex<'i>,
    memory: &'m mut M,
    unreadable_regions: u64,
    unreadable_bytes: u64,
    buffer: Vec<u8>,
    parts: Vec<Range<u64>>,
}

impl<M: Memory> Scanner<'_, '_, M> {
    /// Calls `found` for every aligned word in `range` that points at a block.
    fn scan(&mut self, range: Range<u64>, target: Target, mut found: impl FnMut(usize)) {
        let mut parts = std::mem::take(&mut self.parts);
        parts.clear();
        self.memory.clip(range, &mut parts);
        for part in &parts {
            self.scan_part(part.clone(), target, &mut found);
        }
        self.parts = parts;
    }

    fn scan_part(&mut self, range: Range<u64>, target: Target, found: &mut impl FnMut(usize)) {
        let mut at = range.start.next_multiple_of(WORD);
        while at + WORD <= range.end {
            let len = (range.end - at).min(CHUNK) / WORD * WORD;
            self.buffer.resize(len as usize, 0);
            if !self.memory.read(at, &mut self.buffer) {
                self.unreadable_regions += 1;
                self.unreadable_bytes += len;
            } else {
                for word in self.buffer.as_chunks::<{ WORD as usize }>().0 {
                    let value = u64::from_ne_bytes(*word);
                    if let Some(block) = self.index.find(value)
                        && (target == Target::Anywhere || self.blocks_start(block) == value)
                    {
                        found(block);
                    }
                }
            }
            at += len;
        }
    }

    fn blocks_start(&self, block: usize) -> u64 {
        self.index.blocks[block].addr
    }
}

#[cfg(test)]
#[expect(
    clippy::single_range_in_vec_init,
    reason = "lists of one root range, on purpose"
)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Category::*, *};

    /// A sparse memory image: readable ranges with their bytes.
    #[derive(Default)]
    struct Image {
        regions: BTreeMap<u64, Vec<u8>>,
    }

    impl Image {
        fn region(&mut self, addr: u64, size: u64) {
            self.regions.insert(addr, vec![0; size as usize]);
        }
        fn write(&mut self, addr: u64, value: u64) {
            let (&start, bytes) = self
                .regions
                .range_mut(..=addr)
                .next_back()
                .expect("write inside a region");
            let at = (addr - start) as usize;
            bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        }
    }

    impl Memory for Image {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            let Some((&start, bytes)) = self.regions.range(..=addr).next_back() else {
                return false;
            };
            let at = (addr - start) as usize;
            match bytes.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    const DATA: u64 = 0x1000;
    const HEAP: u64 = 0x10_0000;

    /// A data segment (the root) and a heap holding `blocks` of 64 bytes at HEAP + 0x100 * i.
    fn setup(blocks: usize) -> (Image, Vec<Block>) {
        let mut image = Image::default();
        image.region(DATA, 0x100);
        image.region(HEAP, 0x100 * blocks as u64);
        let blocks = (0..blocks as u64)
            .map(|i| Block {
                addr: HEAP + 0x100 * i,
                size: 64,
            })
            .collect();
        (image, blocks)
    }

    fn regions(ranges: &[Range<u64>]) -> Roots {
        Roots {
            regions: ranges.to_vec(),
            ..Roots::default()
        }
    }

    fn run(image: &mut Image, blocks: &[Block]) -> Vec<Category> {
        let result = classify(blocks, &regions(&[DATA..DATA + 0x100]), image);
        assert_eq!(result.unreadable_regions, 0);
        result.categories
    }

    #[test]
    fn a_block_with_no_reference_is_definitely_lost() {
        let (mut image, blocks) = setup(1);
        assert_eq!(run(&mut image, &blocks), [DefinitelyLost]);
    }

    #[test]
    fn a_block_referenced_from_a_root_is_reachable_and_so_is_what_it_points_to() {
        let (mut image, blocks) = setup(3);
        image.write(DATA + 8, blocks[0].addr);
        image.write(blocks[0].addr + 16, blocks[1].addr);
        assert_eq!(
            run(&mut image, &blocks),
            [StillReachable, StillReachable, DefinitelyLost]
        );
    }

    #[test]
    fn an_interior_pointer_keeps_a_block_reachable() {
        let (mut image, blocks) = setup(1);
        image.write(DATA, blocks[0].addr + 63);
        assert_eq!(run(&mut image, &blocks), [StillReachable]);
        // One past the end points at nothing.
        image.write(DATA, blocks[0].addr + 64);
        assert_eq!(run(&mut image, &blocks), [DefinitelyLost]);
    }

    #[test]
    fn what_a_lost_block_points_to_is_indirectly_lost() {
        let (mut image, blocks) = setup(3);
        // 2 -> 1 -> 0: found in address order, 0 and 1 lead first but are reached from 2.
        image.write(blocks[2].addr, blocks[1].addr);
        image.write(blocks[1].addr + 8, blocks[0].addr);
        assert_eq!(
            run(&mut image, &blocks),
            [IndirectlyLost, IndirectlyLost, DefinitelyLost]
        );
    }

    #[test]
    fn an_unreachable_cycle_has_one_direct_block_and_the_rest_indirect() {
        let (mut image, blocks) = setup(3);
        image.write(blocks[0].addr, blocks[1].addr);
        image.write(blocks[1].addr, blocks[2].addr);
        image.write(blocks[2].addr, blocks[0].addr);
        assert_eq!(
            run(&mut image, &blocks),
            [DefinitelyLost, IndirectlyLost, IndirectlyLost]
        );
    }

    #[test]
    fn unaligned_words_are_not_pointers() {
        let (mut image, blocks) = setup(1);
        // The pointer straddles two aligned words.
        let bytes = blocks[0].addr.to_ne_bytes();
        let mut low = [0u8; 8];
        let mut high = [0u8; 8];
        low[4..].copy_from_slice(&bytes[..4]);
        high[..4].copy_from_slice(&bytes[4..]);
        image.write(DATA, u64::from_ne_bytes(low));
        image.write(DATA + 8, u64::from_ne_bytes(high));
        assert_eq!(run(&mut image, &blocks), [DefinitelyLost]);
    }

    #[test]
    fn unreadable_memory_is_counted_not_fatal() {
        let (mut image, blocks) = setup(1);
        image.write(DATA, blocks[0].addr);
        let result = classify(
            &blocks,
            &regions(&[0x9000_0000..0x9000_1000, DATA..DATA + 0x100]),
            &mut image,
        );
        assert_eq!(result.categories, [StillReachable]);
        assert_eq!(result.unreadable_regions, 1);
        assert_eq!(result.unreadable_bytes, 0x1000);
    }

    #[test]
    fn a_zero_sized_block_is_found_by_its_address() {
        let mut image = Image::default();
        image.region(DATA, 0x100);
        let blocks = [Block {
            addr: HEAP,
            size: 0,
        }];
        image.write(DATA, HEAP);
        assert_eq!(
            classify(&blocks, &regions(&[DATA..DATA + 0x100]), &mut image).categories,
            [StillReachable]
        );
    }

    #[test]
    fn large_roots_are_scanned_in_chunks() {
        let mut image = Image::default();
        let size = 3 * CHUNK + 24;
        image.region(DATA, size);
        let (_, blocks) = setup(2);
        image.region(HEAP, 0x200);
        image.write(DATA + size - 8, blocks[1].addr);
        let result = classify(&blocks, &regions(&[DATA..DATA + size]), &mut image);
        assert_eq!(result.categories, [DefinitelyLost, StillReachable]);
    }

    #[test]
    fn a_register_value_is_a_root() {
        let (mut image, blocks) = setup(2);
        image.write(blocks[1].addr + 8, blocks[0].addr);
        let roots = Roots {
            words: vec![0, blocks[1].addr + 40],
            ..Roots::default()
        };
        let result = classify(&blocks, &roots, &mut image);
        assert_eq!(result.categories, [StillReachable, StillReachable]);
    }

    #[test]
    fn a_root_block_is_reachable_and_so_is_what_it_points_to() {
        // Like a thread's TLS vector, allocated by the dynamic linker: nothing points at it,
        // and it points at a dynamic TLS block.
        let (mut image, blocks) = setup(3);
        image.write(blocks[1].addr + 8, blocks[2].addr);
        let roots = Roots {
            blocks: vec![1],
            ..Roots::default()
        };
        let result = classify(&blocks, &roots, &mut image);
        assert_eq!(
            result.categories,
            [DefinitelyLost, StillReachable, StillReachable]
        );
    }

    #[test]
    fn in_the_allocators_data_only_pointers_to_a_block_start_count() {
        let (mut image, blocks) = setup(2);
        // Like glibc's `top`: a chunk header inside the block before it.
        image.write(DATA, blocks[0].addr + 48);
        image.write(DATA + 8, blocks[1].addr);
        let roots = Roots {
            allocator_regions: vec![DATA..DATA + 0x100],
            ..Roots::default()
        };
        let result = classify(&blocks, &roots, &mut image);
        assert_eq!(result.categories, [DefinitelyLost, StillReachable]);
    }

    /// An image with a hole that is inaccessible on purpose (a guard page).
    struct Guarded {
        image: Image,
        guard: Range<u64>,
    }

    impl Memory for Guarded {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            self.image.read(addr, buf)
        }
        fn clip(&self, range: Range<u64>, parts: &mut Vec<Range<u64>>) {
            let before = range.start..range.end.min(self.guard.start);
            let after = range.start.max(self.guard.end)..range.end;
            parts.extend([before, after].into_iter().filter(|part| !part.is_empty()));
        }
    }

    #[test]
    fn inaccessible_parts_are_skipped_and_not_counted_as_unreadable() {
        let mut image = Image::default();
        image.region(DATA, 0x100);
        image.region(HEAP, 0x100);
        image.region(HEAP + 0x1100, 0x100);
        image.region(HEAP + 0x2000, 0x100);
        let blocks = [
            Block {
                addr: HEAP,
                size: 0x1200,
            },
            Block {
                addr: HEAP + 0x2000,
                size: 8,
            },
        ];
        image.write(DATA, HEAP + 0x1180);
        image.write(HEAP + 0x1108, HEAP + 0x2000);
        let mut memory = Guarded {
            image,
            guard: HEAP + 0x100..HEAP + 0x1100,
        };
        let result = classify(&blocks, &regions(&[DATA..DATA + 0x100]), &mut memory);
        assert_eq!(result.categories, [StillReachable, StillReachable]);
        assert_eq!(result.unreadable_regions, 0);
    }

    fn classified(image: &mut Image, blocks: &[Block]) -> Classification {
        classify(blocks, &regions(&[DATA..DATA + 0x100]), image)
    }

    #[test]
    fn lost_blocks_pointing_at_each_other_are_a_cycle_with_their_heads() {
        let (mut image, blocks) = setup(4);
        // 0 <-> 2, each starting with counts 1 and 1 (an Rc's strong and weak); 1 -> 3, no cycle.
        for (block, other) in [(0, 2), (2, 0)] {
            image.write(blocks[block].addr, 1);
            image.write(blocks[block].addr + 8, 1);
            image.write(blocks[block].addr + 16, blocks[other].addr + 16);
        }
        image.write(blocks[1].addr, blocks[3].addr);
        let result = classified(&mut image, &blocks);
        assert_eq!(
            result.categories,
            [
                DefinitelyLost,
                DefinitelyLost,
                IndirectlyLost,
                IndirectlyLost
            ]
        );
        assert_eq!(result.holders, [None, None, Some(0), Some(1)]);
        assert_eq!(
            result.cycles,
            [Cycle {
                blocks: vec![0, 2],
                heads: vec![Some([1, 1]), Some([1, 1])],
            }]
        );
    }

    #[test]
    fn a_cycle_of_three_holds_what_it_points_to_and_a_tree_is_no_cycle() {
        let (mut image, blocks) = setup(6);
        // A cycle 0 -> 1 -> 2 -> 0 holding 3; a tree 4 -> 5.
        image.write(blocks[0].addr, blocks[1].addr);
        image.write(blocks[1].addr, blocks[2].addr);
        image.write(blocks[2].addr, blocks[0].addr);
        image.write(blocks[2].addr + 8, blocks[3].addr);
        image.write(blocks[4].addr + 8, blocks[5].addr);
        let result = classified(&mut image, &blocks);
        assert_eq!(
            result.holders,
            [None, Some(0), Some(0), Some(0), None, Some(4)]
        );
        let cycles: Vec<&[usize]> = result.cycles.iter().map(|c| c.blocks.as_slice()).collect();
        assert_eq!(cycles, [[0, 1, 2].as_slice()]);
    }

    #[test]
    fn a_leader_reached_later_is_held_by_the_block_that_reaches_it() {
        let (mut image, blocks) = setup(3);
        // 2 -> 0 -> 1: 0 leads first (by address), then 2 reaches it.
        image.write(blocks[2].addr, blocks[0].addr);
        image.write(blocks[0].addr, blocks[1].addr);
        let result = classified(&mut image, &blocks);
        assert_eq!(
            result.categories,
            [IndirectlyLost, IndirectlyLost, DefinitelyLost]
        );
        assert_eq!(result.holders, [Some(2), Some(2), None]);
        assert!(result.cycles.is_empty());
    }

    #[test]
    fn a_block_pointing_into_itself_is_a_cycle_of_one_and_reachable_cycles_are_none() {
        let (mut image, blocks) = setup(3);
        image.write(blocks[0].addr + 8, blocks[0].addr);
        // 1 <-> 2, reachable from the data segment.
        image.write(DATA, blocks[1].addr);
        image.write(blocks[1].addr, blocks[2].addr);
        image.write(blocks[2].addr, blocks[1].addr);
        let result = classified(&mut image, &blocks);
        let cycles: Vec<&[usize]> = result.cycles.iter().map(|c| c.blocks.as_slice()).collect();
        assert_eq!(cycles, [[0].as_slice()]);
    }
}
