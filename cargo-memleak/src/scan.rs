//! The leak scan of a process held at its exit stop: where it may keep pointers (its roots),
//! and its memory, read through `process_vm_readv`.
//!
//! Roots are every readable and writable mapping that holds the program's data, which is every
//! one except:
//! - the allocator's heaps: `[heap]` and glibc's arenas, whose free chunks keep stale pointers;
//! - stacks of threads that are gone: glibc caches them, old contents and all;
//! - the dynamic linker's own data: its bookkeeping keeps stale pointers too (glibc's
//!   `cache_new` still points where `/etc/ld.so.cache` was mapped before it was unmapped, and a
//!   later `mmap` can land there), and what it legitimately points to it allocated itself,
//!   which is a root of its own (see [`linker_blocks`]);
//! - the mappings a `#[global_allocator]` made for itself inside its own calls (its arenas);
//! - outstanding blocks: they are scanned only once reached (what lies around them in a mapping
//!   that holds them, a bss holding a static arena for example, stays a root).
//!
//! Every thread alive at the exit adds its registers and its stack from its stack pointer (less
//! the 128-byte red zone) up; with the stack pointer elsewhere (a signal or coroutine stack),
//! its own stack is scanned whole as well, and so is the alternate signal stack it registered
//! (the kernel holds that pointer). A thread that ended unseen is scanned as it was at the
//! last stop it was resumed from ([`ThreadState::LastSeen`]): the exit's kill can meet that
//! resume, and it then died there. One never stopped holds nothing but what lies above where
//! it was to start ([`ThreadState::Gone`]). A thread whose
//! registers could not be read adds its whole stack, and is a [`Gap`]. The allocator's own data
//! is a root where only pointers to a block's start count (see [`Roots::allocator_regions`]).
//!
//! Invariants: a mapping is read only if it is readable; a read that fails is the caller's to
//! count, never fatal. Every root the scan could not see is reported as a [`Gap`]: a missing
//! root can only make memory look lost, never hide a leak.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
    path::{Path, PathBuf},
};

use nix::{libc::user_regs_struct, unistd::Pid};
use procfs::process::{MMPermissions, MMapPath, Process};

use crate::{
    classify::{Block, Memory, Roots},
    spawn::{LiveThread, ThreadState},
};

/// The red zone below the stack pointer (x86-64 SysV ABI): a leaf function's locals live there.
const RED_ZONE: u64 = 128;
/// glibc reserves each arena's address space aligned to this (`HEAP_MAX_SIZE` on 64-bit).
const ARENA_ALIGN: u64 = 64 << 20;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub range: Range<u64>,
    /// Where in its file it starts (0 for anonymous memory).
    pub offset: u64,
    pub readable: bool,
    pub writable: bool,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File(PathBuf),
    Anonymous,
    Heap,
    /// The main thread's stack.
    Stack,
    /// `[vdso]`, `[vvar]` and other kernel-provided mappings.
    Special,
}

/// The memory map of process `pid`.
pub fn mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let maps = Process::new(pid as i32)
        .and_then(|process| process.maps())
        .map_err(std::io::Error::other)?;
    Ok(maps
        .into_iter()
        .map(|map| Mapping {
            range: map.address.0..map.address.1,
            offset: map.offset,
            readable: map.perms.contains(MMPermissions::READ),
            writable: map.perms.contains(MMPermissions::WRITE),
            kind: match map.pathname {
                MMapPath::Path(path) => Kind::File(path),
                MMapPath::Anonymous => Kind::Anonymous,
                MMapPath::Heap => Kind::Heap,
                MMapPath::Stack => Kind::Stack,
                _ => Kind::Special,
            },
        })
        .collect())
}

/// Whether `address` lies in `file`'s mapping at one of the file offsets `code`.
pub fn in_code(maps: &[Mapping], file: &Path, code: &[Range<u64>], address: u64) -> bool {
    maps.iter().any(|map| {
        map.range.contains(&address)
            && map.kind == Kind::File(file.to_owned())
            && code
                .iter()
                .any(|code| code.contains(&(address - map.range.start + map.offset)))
    })
}

/// The mapped paths that are `file`: by path, or by the file a mapped path resolves to (each
/// distinct path is resolved once).
pub fn paths_of<'m>(maps: &'m [Mapping], file: &Path) -> BTreeSet<&'m Path> {
    let wanted = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let mapped: BTreeSet<&Path> = maps
        .iter()
        .filter_map(|map| match &map.kind {
            Kind::File(path) => Some(path.as_path()),
            _ => None,
        })
        .collect();
    mapped
        .into_iter()
        .filter(|path| {
            *path == file || std::fs::canonicalize(path).is_ok_and(|path| path == wanted)
        })
        .collect()
}

/// The threads of a process at its exit stop.
#[derive(Clone, Debug)]
pub struct Threads {
    /// The process (its main thread's id).
    pub pid: u32,
    /// Every thread alive when it began to exit ([`crate::spawn::Running::live_threads`]).
    pub live: Vec<LiveThread>,
    /// Thread id → the alternate signal stack it registered with the kernel, which holds that
    /// pointer (Rust's runtime keeps its main thread's in no memory of the program).
    pub altstacks: BTreeMap<u32, u64>,
}

/// A root the scan could not see. Each can only make memory look lost: when nothing is lost,
/// it cannot change the result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Gap {
    /// A thread alive at the exit whose registers could not be read (its whole stack was
    /// scanned instead).
    ThreadRegisters { tid: u32 },
    /// A thread alive at the exit whose registers and stack could not be found.
    ThreadStack { tid: u32 },
    /// Memory (roots or blocks) that could not be read.
    Unreadable { regions: u64, bytes: u64 },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::ThreadRegisters { tid } => {
                write!(
                    f,
                    "the registers of thread {tid} could not be read at its exit"
                )
            }
            Gap::ThreadStack { tid } => {
                write!(f, "the stack of live thread {tid} could not be found")
            }
            Gap::Unreadable { regions, bytes } => write!(
                f,
                "{bytes} bytes in {regions} regions could not be read while scanning for pointers"
            ),
        }
    }
}

/// The loaded objects the scan treats apart, by their mapped paths ([`paths_of`]).
#[derive(Clone, Debug, Default)]
pub struct SystemObjects<'m> {
    /// The allocator's object (libc).
    pub allocator: BTreeSet<&'m Path>,
    /// The dynamic linker: the object mapped at `AT_BASE`.
    pub linker: BTreeSet<&'m Path>,
    /// Mappings the allocator made for itself inside its own calls (a `#[global_allocator]`'s
    /// arenas, segments, extents): their free parts keep stale pointers.
    pub allocator_maps: Vec<Range<u64>>,
}

/// The path of the dynamic linker mapped into process `pid`: the object whose first mapping
/// starts at the auxiliary vector's `AT_BASE` (what LeakSanitizer calls the linker). `None` for
/// a program without an interpreter (statically linked).
pub fn dynamic_linker(pid: u32, maps: &[Mapping]) -> Option<&Path> {
    const AT_BASE: u64 = 7;
    let auxv = Process::new(pid as i32)
        .and_then(|process| process.auxv())
        .ok()?;
    let base = *auxv.get(&AT_BASE).filter(|&&base| base != 0)?;
    maps.iter().find_map(|map| match &map.kind {
        Kind::File(path) if map.range.start == base => Some(path.as_path()),
        _ => None,
    })
}

/// The blocks the dynamic linker allocated: those whose allocation's innermost frame (its
/// caller) lies in the linker's mappings. They are roots, as in LeakSanitizer
/// (`use_ld_allocations`): thread-local storage vectors and dynamic TLS blocks, which only
/// the linker's own bookkeeping reaches.
pub fn linker_blocks(
    maps: &[Mapping],
    linker: &BTreeSet<&Path>,
    callers: impl IntoIterator<Item = Option<u64>>,
) -> Vec<usize> {
    let ranges: Vec<&Range<u64>> = maps
        .iter()
        .filter(|map| matches!(&map.kind, Kind::File(path) if linker.contains(path.as_path())))
        .map(|map| &map.range)
        .collect();
    callers
        .into_iter()
        .enumerate()
        .filter(|(_, caller)| {
            caller.is_some_and(|caller| ranges.iter().any(|range| range.contains(&caller)))
        })
        .map(|(index, _)| index)
        .collect()
}

/// The general-purpose registers that can hold a pointer.
fn register_words(regs: &user_regs_struct) -> [u64; 18] {
    [
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.rbp,
        regs.rbx,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rax,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rsp,
        regs.fs_base,
        regs.gs_base,
    ]
}

/// The roots of the process, and the ones that could not be seen.
pub fn roots(
    maps: &[Mapping],
    blocks: &[Block],
    threads: &Threads,
    objects: &SystemObjects<'_>,
) -> (Roots, Vec<Gap>) {
    let mut roots = Roots::default();
    let mut gaps = Vec::new();
    let containing = |addr: u64| maps.iter().position(|map| map.range.contains(&addr));
    // Mappings that are some live thread's stack: scanned as such, never skipped as dead.
    let mut live_stacks = Vec::new();

    let main_stack = maps.iter().position(|map| map.kind == Kind::Stack);
    // Every live thread's register values: one pointing into a stack no thread runs on yet is
    // a thread being created there (see below).
    let mut register_values = Vec::new();
    for thread in &threads.live {
        if let ThreadState::Stopped(regs) | ThreadState::LastSeen(regs) = &thread.state {
            register_values.extend(register_words(regs));
        }
    }
    for thread in &threads.live {
        // Its own stack: where it started, or the process's stack for the main thread.
        let own = if thread.tid == threads.pid {
            main_stack
        } else {
            thread.start_sp.and_then(containing)
        };
        if !matches!(thread.state, ThreadState::Gone) {
            roots.words.extend(threads.altstacks.get(&thread.tid));
        }
        let whole = match &thread.state {
            // Killed by the exit before its exit stop could be had: its registers and frames
            // are gone, but what lies above where it started is still its own: its
            // thread-locals and glibc's thread descriptor, with what it was started with
            // (a thread killed before it ran holds its start routine's argument nowhere else).
            ThreadState::Gone => {
                if let Some((at, start)) =
                    thread.start_sp.and_then(|sp| Some((containing(sp)?, sp)))
                {
                    let map = &maps[at];
                    let from = start.saturating_sub(RED_ZONE).max(map.range.start);
                    roots.regions.push(from..map.range.end);
                    live_stacks.push(at);
                }
                continue;
            }
            ThreadState::Stopped(regs) | ThreadState::LastSeen(regs) => {
                roots.words.extend(register_words(regs));
                match containing(regs.rsp) {
                    Some(at) => {
                        let map = &maps[at];
                        let from = regs.rsp.saturating_sub(RED_ZONE).max(map.range.start);
                        roots.regions.push(from..map.range.end);
                        live_stacks.push(at);
                        // On another stack (a signal's, a coroutine's): its own one too.
                        own.filter(|&own| own != at)
                    }
                    None => own,
                }
            }
            ThreadState::Unresponsive => {
                gaps.push(match own {
                    Some(_) => Gap::ThreadRegisters { tid: thread.tid },
                    None => Gap::ThreadStack { tid: thread.tid },
                });
                own
            }
        };
        if let Some(at) = whole
            && !live_stacks.contains(&at)
        {
            live_stacks.push(at);
            roots.regions.push(maps[at].range.clone());
        }
    }

    let is_allocator = |kind: &Kind| matches!(kind, Kind::File(path) if objects.allocator.contains(path.as_path()));
    let is_linker =
        |kind: &Kind| matches!(kind, Kind::File(path) if objects.linker.contains(path.as_path()));
    let mut sorted_blocks: Vec<Range<u64>> = blocks
        .iter()
        .map(|block| block.addr..block.addr.saturating_add(block.size.max(1)))
        .collect();
    sorted_blocks.sort_by_key(|range| range.start);
    let holds_block = |range: &Range<u64>| {
        let after = sorted_blocks.partition_point(|block| block.start < range.end);
        after
            .checked_sub(1)
            .is_some_and(|last| sorted_blocks[last].end > range.start)
    };
    // The parts of a range that no block covers.
    let around_blocks = |range: Range<u64>| {
        let mut parts = Vec::new();
        let mut at = range.start;
        let first = sorted_blocks.partition_point(|block| block.end <= range.start);
        for block in &sorted_blocks[first..] {
            if block.start >= range.end {
                break;
            }
            if block.start > at {
                parts.push(at..block.start);
            }
            at = at.max(block.end);
        }
        if at < range.end {
            parts.push(at..range.end);
        }
        parts
    };
    let guard = |at: Option<usize>, adjacent_to: u64| {
        at.and_then(|at| maps.get(at)).is_some_and(|map| {
            map.kind == Kind::Anonymous
                && !map.readable
                && !map.writable
                && (map.range.end == adjacent_to || map.range.start == adjacent_to)
        })
    };

    let mut allocator_file_end = None;
    for (at, map) in maps.iter().enumerate() {
        if is_allocator(&map.kind) {
            allocator_file_end = Some(map.range.end);
        }
        if !map.readable || !map.writable || live_stacks.contains(&at) {
            continue;
        }
        let range = map.range.clone();
        let allocators_own = objects
            .allocator_maps
            .iter()
            .any(|own| own.start < range.end && range.start < own.end);
        match &map.kind {
            Kind::Heap | Kind::Stack | Kind::Special => continue,
            Kind::Anonymous if allocators_own => continue,
            Kind::Anonymous => {
                // Below it a guard page: a thread's stack, and its thread is gone.
                let dead_stack = guard(at.checked_sub(1), range.start);
                // 64 MiB-aligned with its reserve after it: a glibc arena.
                let arena = range.start % ARENA_ALIGN == 0 && guard(Some(at + 1), range.end);
                if dead_stack {
                    // A thread being created when the exit came: its creator holds its glibc
                    // descriptor (at the top of the stack), which holds what it is started
                    // with and is pointed to from nowhere else.
                    if let Some(&descriptor) =
                        register_values.iter().find(|&&word| range.contains(&word))
                    {
                        roots.regions.push(descriptor..range.end);
                    }
                    continue;
                }
                if arena {
                    continue;
                }
                if holds_block(&range) {
                    // A mapping of blocks, or a bss holding an arena (a `GlobalAlloc` over a
                    // static): what lies around the blocks is still a root.
                    roots.regions.extend(around_blocks(range));
                    continue;
                }
                if allocator_file_end == Some(range.start) {
                    // The allocator's .bss, past the end of its file.
                    roots.allocator_regions.push(range);
                } else {
                    roots.regions.push(range);
                }
            }
            // Data or bss holding blocks (a `GlobalAlloc` over a static arena): the program's
            // statics around the blocks are still roots.
            Kind::File(_) if holds_block(&range) => roots.regions.extend(around_blocks(range)),
            kind if is_linker(kind) => continue,
            kind if is_allocator(kind) => roots.allocator_regions.push(range),
            Kind::File(_) => roots.regions.push(range),
        }
    }
    (roots, gaps)
}

/// Reads a stopped process's memory, caching small reads by window: the scan reads many
/// small blocks, mostly packed together.
pub struct ProcessMemory {
    pid: Pid,
    /// Readable mappings, by start.
    readable: Vec<Range<u64>>,
    /// Mappings that cannot be read on purpose (guard pages, reserved address space).
    inaccessible: Vec<Range<u64>>,
    /// Window start → its bytes.
    cache: BTreeMap<u64, Vec<u8>>,
    cached_bytes: usize,
}

/// Reads at least this long bypass the cache.
const DIRECT_READ: usize = 64 * 1024;
const WINDOW: u64 = 256 * 1024;
/// Above this the cache is emptied and starts over.
const CACHE_LIMIT: usize = 512 << 20;

impl ProcessMemory {
    pub fn new(pid: u32, maps: &[Mapping]) -> Self {
        let ranges = |readable: bool| {
            maps.iter()
                .filter(|map| map.readable == readable)
                .map(|map| map.range.clone())
                .collect()
        };
        Self {
            pid: Pid::from_raw(pid as i32),
            readable: ranges(true),
            inaccessible: ranges(false),
            cache: BTreeMap::new(),
            cached_bytes: 0,
        }
    }

    fn read_direct(&self, addr: u64, buf: &mut [u8]) -> bool {
        use nix::sys::uio::{RemoteIoVec, process_vm_readv};
        let len = buf.len();
        let Ok(base) = usize::try_from(addr) else {
            return false;
        };
        let remote = [RemoteIoVec { base, len }];
        let mut local = [std::io::IoSliceMut::new(buf)];
        process_vm_readv(self.pid, &mut local, &remote).is_ok_and(|read| read == len)
    }

    /// The cached window holding `addr`, read first if needed.
    fn window(&mut self, addr: u64) -> Option<(u64, &[u8])> {
        let cached = self
            .cache
            .range(..=addr)
            .next_back()
            .is_some_and(|(&start, bytes)| addr < start + bytes.len() as u64);
        if !cached {
            let at = self.readable.partition_point(|map| map.start <= addr);
            let map = self.readable.get(at.checked_sub(1)?)?.clone();
            if addr >= map.end {
                return None;
            }
            let start = (addr / WINDOW * WINDOW).max(map.start);
            let end = (addr / WINDOW * WINDOW + WINDOW).min(map.end);
            let mut bytes = vec![0; (end - start) as usize];
            if !self.read_direct(start, &mut bytes) {
                return None;
            }
            if self.cached_bytes + bytes.len() > CACHE_LIMIT {
                self.cache.clear();
                self.cached_bytes = 0;
            }
            self.cached_bytes += bytes.len();
            self.cache.insert(start, bytes);
        }
        let (&start, bytes) = self.cache.range(..=addr).next_back()?;
        Some((start, bytes))
    }
}

impl Memory for ProcessMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.len() >= DIRECT_READ {
            return self.read_direct(addr, buf);
        }
        let mut done = 0;
        while done < buf.len() {
            let at = addr + done as u64;
            let Some((start, bytes)) = self.window(at) else {
                return false;
            };
            let from = (at - start) as usize;
            let n = (bytes.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[from..from + n]);
            done += n;
        }
        true
    }

    fn clip(&self, range: Range<u64>, parts: &mut Vec<Range<u64>>) {
        let mut at = range.start;
        let first = self.inaccessible.partition_point(|map| map.end <= at);
        for hole in &self.inaccessible[first..] {
            if hole.start >= range.end {
                break;
            }
            if hole.start > at {
                parts.push(at..hole.start);
            }
            at = at.max(hole.end);
        }
        if at < range.end {
            parts.push(at..range.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Category, classify};

    #[test]
    fn process_memory_reads_a_live_process() {
        // This process, read through process_vm_readv like a traced one.
        let target: Box<[u64; 4]> = Box::new([7, 0x1234_5678, u64::MAX, 42]);
        let addr = target.as_ptr() as u64;
        let maps = mappings(std::process::id()).expect("own maps");
        let mut memory = ProcessMemory::new(std::process::id(), &maps);
        let mut buf = [0u8; 32];
        assert!(memory.read(addr, &mut buf));
        assert_eq!(
            u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
            0x1234_5678
        );
        // Unmapped memory is reported, not fatal.
        assert!(!memory.read(8, &mut buf));
        // A large read goes around the cache and reads the same bytes.
        let big = vec![0x5au8; 2 * DIRECT_READ];
        let mut copy = vec![0u8; big.len()];
        assert!(memory.read(big.as_ptr() as u64, &mut copy));
        assert_eq!(copy, big);
        // And the classifier finds a block through it: the boxed array points at nothing, a
        // root holding its address keeps it reachable.
        // (A new reader: the old one's cache predates the root. A traced process is stopped.)
        let root: Box<u64> = Box::new(addr);
        let root_addr = &*root as *const u64 as u64;
        let maps = mappings(std::process::id()).expect("own maps");
        let mut memory = ProcessMemory::new(std::process::id(), &maps);
        let blocks = [Block { addr, size: 32 }];
        let roots = Roots {
            regions: std::iter::once(root_addr..root_addr + 8).collect(),
            ..Roots::default()
        };
        let result = classify(&blocks, &roots, &mut memory);
        assert_eq!(result.categories, [Category::StillReachable]);
    }

    #[test]
    fn clip_leaves_out_inaccessible_mappings_only() {
        let maps = [
            (0x1000..0x2000, true),
            (0x2000..0x3000, false),
            (0x3000..0x5000, true),
            (0x6000..0x7000, false),
        ]
        .map(|(range, readable)| Mapping {
            range,
            offset: 0,
            readable,
            writable: readable,
            kind: Kind::Anonymous,
        });
        let memory = ProcessMemory::new(std::process::id(), &maps);
        let mut parts = Vec::new();
        memory.clip(0x1800..0x8000, &mut parts);
        // The gap at 0x5000 is unmapped, not inaccessible: it stays, so reading it fails.
        assert_eq!(parts, [0x1800..0x2000, 0x3000..0x6000, 0x7000..0x8000]);
    }
}
