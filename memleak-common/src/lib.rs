//! Types that cross the kernel/user boundary.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the eBPF programs and
//! userspace agree on every byte. With the `user` feature the types implement `aya::Pod` and can
//! be read from (and written to) the maps.

#![no_std]

/// Names of the maps and programs, so both sides spell them once.
pub mod names {
    /// Each traced process's own map of outstanding allocations, by its slot
    /// ([`ProcessStats::slot`](super::ProcessStats::slot)): an array of maps whose inner maps
    /// (address → [`AllocInfo`](super::AllocInfo)) userspace creates per process, small enough
    /// to read and drop at once.
    pub const OWN_ALLOCS: &str = "OWN_ALLOCS";
    /// Each traced process's own map of stacks, by its slot: stack id → frames.
    pub const OWN_STACKS: &str = "OWN_STACKS";
    /// The mappings the allocator made for itself (arenas, segments, extents), by slot: their
    /// start → length. Neither blocks nor roots.
    pub const OWN_ALLOCATOR_MAPS: &str = "OWN_ALLOCATOR_MAPS";
    /// Each traced thread's alternate signal stack, as it registered it with `sigaltstack`, by
    /// slot: thread id → `ss_sp`. The kernel holds that pointer, so it is a root.
    pub const OWN_ALTSTACKS: &str = "OWN_ALTSTACKS";
    /// Outstanding allocations of a process whose own map was full, shared by every traced
    /// process: [`AllocKey`] → [`AllocInfo`].
    pub const ALLOCS: &str = "ALLOCS";
    /// Each thread's allocator call between its entry and its return, in the thread's own
    /// storage (a task storage map, freed with the thread): [`ThreadCalls`](super::ThreadCalls).
    pub const THREADS: &str = "THREADS";
    /// User stacks captured at allocation return, of a process whose own stack map was full:
    /// [`StackKey`] → [`StackFrames`].
    pub const STACKS: &str = "STACKS";
    /// Per-CPU scratch buffer the stack is captured into before it is hashed.
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    /// Per traced process counters: tgid → [`ProcessStats`]. A process is traced exactly
    /// while it has an entry here.
    pub const STATS: &str = "STATS";
    /// The read-only global holding [`KernelFields`](super::KernelFields).
    pub const KERNEL_FIELDS: &str = "KERNEL_FIELDS";
    /// The read-only global holding [`TraceConfig`](super::TraceConfig).
    pub const TRACE_CONFIG: &str = "TRACE_CONFIG";
    /// `--combined-only`: outstanding totals per stack, [`StackKey`](super::StackKey) →
    /// [`StackTotal`](super::StackTotal), kept equal to ALLOCS summed by stack.
    pub const COMBINED: &str = "COMBINED";
    /// `--sample-rate`: each thread's allocations so far, pid_tgid → count (LRU).
    pub const SAMPLES: &str = "SAMPLES";
    /// `--trace`: one [`TraceEvent`](super::TraceEvent) per allocation and free (ring buffer).
    pub const EVENTS: &str = "EVENTS";
    /// Threads held at a `ptrace` call that needs a process already traced here (the caller's
    /// own, for `PTRACE_TRACEME`; the target's, for `PTRACE_ATTACH` and `PTRACE_SEIZE`):
    /// thread id → that process, for the tracer to hand it over (LRU).
    pub const HANDOVERS: &str = "HANDOVERS";
    /// Each traced process's live heap and its peak, by slot:
    /// [`ProcessLive`](super::ProcessLive).
    pub const LIVE: &str = "LIVE";
}

/// The signal the entry program sends a thread it holds at a `ptrace` call
/// ([`names::HANDOVERS`]): its signal-delivery stop comes before the call's system call. SIGURG
/// is ignored by default, so one that reaches a process no longer traced (let go in the
/// meantime) does nothing.
pub const HANDOVER_SIGNAL: u32 = 23;

/// What the programs do besides recording outstanding allocations: the eBPF object's
/// read-only global `TRACE_CONFIG`, set by userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Record one allocation in this many, per thread (0 and 1: every one).
    pub sample_rate: u32,
    /// `TraceConfig::TRACE | COMBINED | AGES`.
    pub flags: u32,
}

impl TraceConfig {
    /// `--trace`: every allocation and free goes to the EVENTS ring buffer.
    pub const TRACE: u32 = 1;
    /// `--combined-only`: totals per stack are kept in COMBINED.
    pub const COMBINED: u32 = 2;
    /// Each allocation's time is recorded (`--older`, and ages with `-a`); without it 0.
    pub const AGES: u32 = 4;
    /// Each process's live heap and its peak are kept in LIVE (unless `--no-peak`).
    pub const HEAP: u32 = 8;
    pub const ZERO: Self = Self {
        sample_rate: 0,
        flags: 0,
    };
}

/// Outstanding bytes and allocations of one stack (`--combined-only`), updated atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotal {
    pub bytes: u64,
    pub allocations: u64,
}

/// One line of `--trace`: an allocation recorded or a recorded block freed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// [`TraceEvent::ALLOC`] or [`TraceEvent::FREE`].
    pub kind: u32,
    /// The process (for the kernel: the task that was running) and thread.
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub addr: u64,
    pub size: u64,
    /// An allocation's innermost frame (0 when its stack was not captured; 0 for a free).
    pub frame: u64,
    pub timestamp_ns: u64,
}

impl TraceEvent {
    pub const ALLOC: u32 = 1;
    pub const FREE: u32 = 2;
}

/// The tgid under which the kernel-allocator tracepoints record (in ALLOCS, STACKS and STATS):
/// no process has it. Kernel tracing is on exactly while STATS has an entry for it.
pub const KERNEL_TGID: u32 = u32::MAX;

/// A page's key in ALLOCS is its frame number plus this, so that frame 0 is not taken for NULL.
/// Frame numbers stay far below slab addresses, so pages and slab objects never collide;
/// per-CPU allocations are traced only without pages (`--percpu`), as their pointers are small.
pub const PAGE_KEY_BASE: u64 = 1 << 12;

/// Where the kernel-allocator tracepoint programs find their fields: byte offsets into each
/// event's record, which userspace reads from tracefs's format files (they move between kernel
/// versions), and the page size. The eBPF object's read-only global `KERNEL_FIELDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFields {
    /// `kmem:kmalloc`'s `ptr` and `bytes_alloc`.
    pub kmalloc_ptr: u32,
    pub kmalloc_bytes: u32,
    /// `kmem:kfree`'s `ptr`.
    pub kfree_ptr: u32,
    /// `kmem:kmem_cache_alloc`'s `ptr` and `bytes_alloc`.
    pub cache_alloc_ptr: u32,
    pub cache_alloc_bytes: u32,
    /// `kmem:kmem_cache_free`'s `ptr`.
    pub cache_free_ptr: u32,
    /// `kmem:mm_page_alloc`'s `pfn` and `order`.
    pub page_alloc_pfn: u32,
    pub page_alloc_order: u32,
    /// `kmem:mm_page_free`'s `pfn` and `order`.
    pub page_free_pfn: u32,
    pub page_free_order: u32,
    /// `percpu:percpu_alloc_percpu`'s `ptr` and `bytes_alloc`.
    pub percpu_alloc_ptr: u32,
    pub percpu_alloc_bytes: u32,
    /// `percpu:percpu_free_percpu`'s `ptr`.
    pub percpu_free_ptr: u32,
    /// Bytes in a page of order 0.
    pub page_size: u32,
}

impl KernelFields {
    pub const ZERO: Self = Self {
        kmalloc_ptr: 0,
        kmalloc_bytes: 0,
        kfree_ptr: 0,
        cache_alloc_ptr: 0,
        cache_alloc_bytes: 0,
        cache_free_ptr: 0,
        page_alloc_pfn: 0,
        page_alloc_order: 0,
        page_free_pfn: 0,
        page_free_order: 0,
        percpu_alloc_ptr: 0,
        percpu_alloc_bytes: 0,
        percpu_free_ptr: 0,
        page_size: 0,
    };
}

/// Frames kept per stack: the kernel's `PERF_MAX_STACK_DEPTH`.
pub const STACK_DEPTH: usize = 127;

/// A captured user stack: return addresses, innermost first, zero-filled after the last frame.
pub type StackFrames = [u64; STACK_DEPTH];

/// Which allocator entry point a pending call belongs to. It decides how the return value is
/// interpreted (see the eBPF crate's `complete_call`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `malloc`, `calloc`, `memalign`/`aligned_alloc`, `valloc`, `pvalloc`: the return value
    /// is the new block, or NULL on failure.
    Plain = 0,
    /// `realloc`, `reallocarray`: may free `old_addr`, may return a new block.
    Realloc = 1,
    /// `posix_memalign`: returns 0 on success and stores the block through `out_ptr`.
    PosixMemalign = 2,
    /// `mmap`: returns the mapping, or `MAP_FAILED`.
    Mmap = 3,
    /// `mremap`: moves or resizes `old_addr`; returns the mapping, or `MAP_FAILED`.
    Mremap = 4,
    /// Rust's `__rust_dealloc`: frees `old_addr`, whose record leaves at the entry (see
    /// [`PendingCall::old`]). Pending like an allocation, so that the allocator's own calls
    /// inside it (a `GlobalAlloc` on top of libc's `free`) are nested in it and not counted
    /// again.
    Dealloc = 5,
}

/// Key of an outstanding allocation. Keyed by process as well as address, so that several
/// traced processes can share one set of maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub addr: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Key of a captured stack: the hash of its frames, and the process it was captured in. Keyed
/// by process so that a process's stacks go when it is forgotten, while others are traced on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub stack_id: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// An outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocInfo {
    /// Requested size in bytes (as the caller asked for it, before allocator rounding).
    pub size: u64,
    /// `bpf_ktime_get_ns()` at the allocation's return.
    pub timestamp_ns: u64,
    /// The stack's hash of its frames ([`StackKey::stack_id`]), or 0 when the stack could not
    /// be captured.
    pub stack_id: u64,
}

/// An allocator call between its entry probe and its return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCall {
    /// A [`CallKind`] as `u32`.
    pub kind: u32,
    /// 1 when `old_addr`'s record was found (and removed) at entry, in `old`.
    pub old_found: u32,
    /// Stack pointer at entry. A nested allocator call (glibc's `realloc(NULL, n)` calls
    /// `malloc`, `malloc` calls `mmap`) runs with a lower stack pointer, a tail call with the
    /// same one; a return with a higher one is the outer call's. A later entry above it means
    /// the call never returned (longjmp, killed thread): the record is stale.
    pub entry_sp: u64,
    /// Requested size.
    pub size: u64,
    /// `realloc`'s and `mremap`'s old block.
    pub old_addr: u64,
    /// `posix_memalign`'s out-pointer.
    pub out_ptr: u64,
    /// `old_addr`'s record, removed at entry. The allocator frees the old block inside the
    /// call, so another thread may be given that address and record it before this call
    /// returns: removing the record at the return would remove that thread's. It goes at the
    /// entry instead, while no one else can have the address, and comes back if the call
    /// fails.
    pub old: AllocInfo,
}

/// Which allocator entry point a probe sits on. One entry program serves them all (one
/// multi-uprobe link per object); the attach cookie tells them apart.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    Reallocarray = 4,
    PosixMemalign = 5,
    /// `memalign(alignment, size)` and `aligned_alloc(alignment, size)`.
    Memalign = 6,
    /// `valloc(size)` and `pvalloc(size)`.
    Valloc = 7,
    Mmap = 8,
    Mremap = 9,
    Free = 10,
    Munmap = 11,
    /// `sigaltstack(ss, old)`: not an allocator call, but the kernel then holds a pointer to
    /// the stack (often an mmap'd region) that no memory of the program may hold.
    Sigaltstack = 12,
    /// Rust's allocator shim, in the executable, whatever the `#[global_allocator]`:
    /// `__rust_alloc(size, align)`.
    RustAlloc = 13,
    /// `__rust_alloc_zeroed(size, align)`.
    RustAllocZeroed = 14,
    /// `__rust_realloc(ptr, old_size, align, new_size)`.
    RustRealloc = 15,
    /// `__rust_dealloc(ptr, size, align)`.
    RustDealloc = 16,
    /// `ptrace(request, pid, ...)`: not an allocator call, but one that needs a process traced
    /// here handed over to the caller ([`names::HANDOVERS`]).
    Ptrace = 17,
}

impl EntryPoint {
    pub const ALL: [EntryPoint; 17] = [
        EntryPoint::Malloc,
        EntryPoint::Calloc,
        EntryPoint::Realloc,
        EntryPoint::Reallocarray,
        EntryPoint::PosixMemalign,
        EntryPoint::Memalign,
        EntryPoint::Valloc,
        EntryPoint::Mmap,
        EntryPoint::Mremap,
        EntryPoint::Free,
        EntryPoint::Munmap,
        EntryPoint::Sigaltstack,
        EntryPoint::RustAlloc,
        EntryPoint::RustAllocZeroed,
        EntryPoint::RustRealloc,
        EntryPoint::RustDealloc,
        EntryPoint::Ptrace,
    ];

    pub fn from_u8(value: u8) -> Option<EntryPoint> {
        let mut at = 0;
        while at < Self::ALL.len() {
            if Self::ALL[at] as u8 == value {
                return Some(Self::ALL[at]);
            }
            at += 1;
        }
        None
    }
}

/// A probe's attach cookie: the entry point it sits on (the top byte), and where the
/// allocator object's text lies relative to the probed instruction (28 bits each: the probe's
/// distance from the text's start, and the text's length), so that a probe can tell calls the
/// allocator makes itself (glibc mapping its arenas and thread stacks) from the program's. The
/// text part is 0 when unknown (or larger than 256 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie(pub u64);

impl Cookie {
    const TEXT_BITS: u32 = 28;
    const TEXT_MASK: u64 = (1 << Self::TEXT_BITS) - 1;

    pub const fn new(entry: EntryPoint, probe_to_text_start: u32, text_len: u32) -> Self {
        let fits = (text_len as u64) <= Self::TEXT_MASK && probe_to_text_start <= text_len;
        let text = if fits {
            ((probe_to_text_start as u64) << Self::TEXT_BITS) | text_len as u64
        } else {
            0
        };
        Cookie(((entry as u64) << 56) | text)
    }

    pub fn entry(self) -> Option<EntryPoint> {
        EntryPoint::from_u8((self.0 >> 56) as u8)
    }

    /// The probe's distance from the start of the text.
    pub const fn probe_to_text_start(self) -> u64 {
        (self.0 >> Self::TEXT_BITS) & Self::TEXT_MASK
    }

    /// The text's length; 0 when unknown.
    pub const fn text_len(self) -> u64 {
        self.0 & Self::TEXT_MASK
    }
}

/// A `mmap` made inside a pending allocator call, until its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedMmap {
    /// The stack pointer at its entry: its return comes with this plus one slot.
    pub entry_sp: u64,
    pub len: u64,
}

/// What a thread's programs keep between an allocator call's entry and its return, in the
/// thread's task storage: found through the task itself, with no hashing, no lock shared with
/// other threads, and nothing for userspace to clean (it goes with the thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCalls {
    /// The outermost call, while `has_pending` is 1.
    pub pending: PendingCall,
    /// A mapping made inside it, while `has_nested` is 1.
    pub nested: NestedMmap,
    pub has_pending: u32,
    pub has_nested: u32,
}

/// Slots in OWN_ALLOCS and OWN_STACKS: processes traced at once with maps of their own.
pub const SLOTS: u32 = 4096;

/// The flags of a process's own maps, which userspace creates and the eBPF object's templates
/// declare alike (the kernel requires them equal; their sizes may differ, as it compares the
/// sizes of inner maps only for arrays). Blocks, the allocator's mappings and alternate stacks
/// are preallocated (an insert takes a free entry rather than allocating one: 140 ns less per
/// allocation, measured); stacks are allocated as they come (`BPF_F_NO_PREALLOC`), as only
/// new stacks are inserted and each is a kilobyte.
pub const OWN_ALLOCS_FLAGS: u32 = 0;
pub const OWN_STACKS_FLAGS: u32 = 1;

/// A process without maps of its own (the kernel's allocators): it records in the shared ones.
pub const NO_SLOT: u32 = u32::MAX;

/// Per process counters, indexed by [`Counter`], and where its own maps are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessStats {
    pub counters: [u64; Counter::COUNT],
    /// Its index in OWN_ALLOCS and OWN_STACKS (the same on every CPU), or [`NO_SLOT`].
    pub slot: u32,
    pub _pad: u32,
    /// The bytes of every allocation recorded ([`Counter::Allocs`]), freed or not.
    pub allocated_bytes: u64,
}

impl ProcessStats {
    pub const ZERO: Self = Self {
        counters: [0; Counter::COUNT],
        slot: NO_SLOT,
        _pad: 0,
        allocated_bytes: 0,
    };

    /// Zeroed counters for the process in `slot`.
    pub const fn in_slot(slot: u32) -> Self {
        Self { slot, ..Self::ZERO }
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }
}

/// A traced process's live heap (names::LIVE, by slot): the bytes it has outstanding now, and
/// the most it ever had outstanding at once. Every CPU updates one
/// value with atomic operations: `bytes` with fetch-and-add, whose result is the live heap
/// just after that allocation in the order all CPUs' updates took effect, and `peak_bytes` by
/// compare-and-swap to the largest such result, so the peak is exact under threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessLive {
    pub bytes: u64,
    pub peak_bytes: u64,
    /// The stack of the allocation that set `peak_bytes` (0: not captured, or the blocks a
    /// forked child started with). Written after the peak, so under threads it can be that of
    /// an allocation which set a peak a moment before.
    pub peak_stack: u64,
}

/// What the eBPF programs count. The first group are events; the second are failures that
/// make a trace incomplete ("drops"); the last are informational.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocations recorded.
    Allocs = 0,
    /// Frees (and unmaps) that matched an outstanding allocation.
    Frees = 1,
    /// An allocation could not be recorded: the allocation map is full.
    AllocMapFull = 2,
    /// The user stack of an allocation could not be captured or stored.
    StackFailed = 3,
    /// `free` of an address that is not outstanding (allocated before tracing, or missed). A
    /// drop when the process was traced from its start; expected when tracing began later
    /// (`attach`, kernel allocators).
    FreeUnknown = 4,
    /// A thread's storage could not be had at an allocator call (no memory for it, or the
    /// storage busy with another program on this CPU), so the call could not be remembered
    /// until its return, or a free could not be told nested or not.
    PendingMapFull = 5,
    /// An allocator call never returned (stale pending record replaced).
    StalePending = 6,
    /// `posix_memalign`'s out-pointer could not be read.
    ReadFailed = 7,
    /// `munmap` of a range that was never traced as a mapping (for example one made by the
    /// dynamic loader). Informational: munmap is not always paired with a traced mmap.
    MunmapUntracked = 8,
    /// `free`, called from inside the allocator object, of a block it never handed out through
    /// a probed entry point (glibc frees its per-thread cache this way). Informational.
    AllocatorInternalFree = 9,
    /// The user stack of an allocation could not be stored: the stack map is full.
    StackMapFull = 10,
    /// `--sample-rate N`: allocations left unrecorded (N - 1 in N). Informational.
    SampledOut = 11,
    /// `--trace`: a trace line lost (the ring buffer was full).
    TraceLost = 12,
    /// Kernel: an allocation at an address still recorded, so the old block's free was missed
    /// (BCC's interrupt-context case). The old record is replaced; a drop, unless
    /// `--wa-missing-free` says to take it for the old block's free.
    MissingFree = 13,
    /// Allocations recorded in the shared map because the process's own was full.
    /// Informational: the shared map is read too.
    SharedAllocs = 14,
    /// Stacks stored in the shared map because the process's own was full. Informational.
    SharedStacks = 15,
    /// The peak could not be raised: other CPUs raced its compare-and-swap every time.
    PeakContended = 16,
}

impl Counter {
    pub const COUNT: usize = 17;

    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Allocs,
        Counter::Frees,
        Counter::AllocMapFull,
        Counter::StackFailed,
        Counter::FreeUnknown,
        Counter::PendingMapFull,
        Counter::StalePending,
        Counter::ReadFailed,
        Counter::MunmapUntracked,
        Counter::AllocatorInternalFree,
        Counter::StackMapFull,
        Counter::SampledOut,
        Counter::TraceLost,
        Counter::MissingFree,
        Counter::SharedAllocs,
        Counter::SharedStacks,
        Counter::PeakContended,
    ];

    /// Counters whose non-zero value means data was lost.
    pub const DROPS: [Counter; 10] = [
        Counter::AllocMapFull,
        Counter::StackMapFull,
        Counter::StackFailed,
        Counter::FreeUnknown,
        Counter::PendingMapFull,
        Counter::StalePending,
        Counter::ReadFailed,
        Counter::TraceLost,
        Counter::MissingFree,
        Counter::PeakContended,
    ];

    /// Stable snake_case name, used in reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Allocs => "allocs",
            Counter::Frees => "frees",
            Counter::AllocMapFull => "alloc_map_full",
            Counter::StackFailed => "stack_failed",
            Counter::FreeUnknown => "free_unknown",
            Counter::PendingMapFull => "pending_map_full",
            Counter::StalePending => "stale_pending",
            Counter::ReadFailed => "read_failed",
            Counter::MunmapUntracked => "munmap_untracked",
            Counter::AllocatorInternalFree => "allocator_internal_free",
            Counter::StackMapFull => "stack_map_full",
            Counter::SampledOut => "sampled_out",
            Counter::TraceLost => "trace_lost",
            Counter::MissingFree => "missing_free",
            Counter::SharedAllocs => "shared_allocs",
            Counter::SharedStacks => "shared_stacks",
            Counter::PeakContended => "peak_contended",
        }
    }

    /// What to do about a drop, when the user can do something.
    pub const fn remedy(self) -> Option<&'static str> {
        match self {
            Counter::AllocMapFull => Some("raise --max-allocs"),
            Counter::StackMapFull => Some("raise --max-stacks"),
            Counter::TraceLost => Some("trace a quieter program, or sample it with --sample-rate"),
            Counter::MissingFree => Some("pass --wa-missing-free to take them for frees"),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with explicit padding fields, so any bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::AllocKey {}
    unsafe impl aya::Pod for super::AllocInfo {}
    unsafe impl aya::Pod for super::StackKey {}
    unsafe impl aya::Pod for super::ProcessStats {}
    unsafe impl aya::Pod for super::ProcessLive {}
    unsafe impl aya::Pod for super::KernelFields {}
    unsafe impl aya::Pod for super::TraceConfig {}
    unsafe impl aya::Pod for super::StackTotal {}
    unsafe impl aya::Pod for super::TraceEvent {}
}

// Layouts are part of the kernel/user contract: fail the build if padding sneaks in.
const _: () = {
    assert!(core::mem::size_of::<AllocKey>() == 16);
    assert!(core::mem::size_of::<AllocInfo>() == 24);
    assert!(core::mem::size_of::<StackKey>() == 16);
    assert!(core::mem::size_of::<PendingCall>() == 64);
    assert!(core::mem::size_of::<ProcessStats>() == 8 * Counter::COUNT + 16);
    assert!(core::mem::size_of::<ProcessLive>() == 24);
    assert!(core::mem::size_of::<KernelFields>() == 56);
    assert!(core::mem::size_of::<NestedMmap>() == 16);
    assert!(core::mem::size_of::<ThreadCalls>() == 88);
    assert!(core::mem::size_of::<TraceConfig>() == 8);
    assert!(core::mem::size_of::<StackTotal>() == 16);
    assert!(core::mem::size_of::<TraceEvent>() == 48);
    assert!(Counter::ALL.len() == Counter::COUNT);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_carry_the_entry_point_and_the_text() {
        for entry in EntryPoint::ALL {
            let cookie = Cookie::new(entry, 0x12_3456, 0x1a_0000);
            assert_eq!(cookie.entry(), Some(entry));
            assert_eq!(cookie.probe_to_text_start(), 0x12_3456);
            assert_eq!(cookie.text_len(), 0x1a_0000);
        }
        // A text past 256 MiB is not described; the entry point still is.
        let cookie = Cookie::new(EntryPoint::Free, 5, 1 << 29);
        assert_eq!(
            (cookie.entry(), cookie.text_len()),
            (Some(EntryPoint::Free), 0)
        );
        assert_eq!(Cookie(0).entry(), None);
    }
}
