//! Uprobes on the C allocator, and tracepoints on the kernel's allocators. They keep, per traced
//! process (or for the kernel, under `KERNEL_TGID`), the set of outstanding allocations with
//! their size, time and stack, and count everything they fail to record.
//!
//! One entry program serves every allocator entry point and one return program every return;
//! the attach cookie says which entry point a probe sits on (`memleak_common::Cookie`), so an
//! object takes two multi-uprobe links per traced process. Each program comes in two sections,
//! `uprobe.multi` and plain `uprobe`, for kernels without multi links.
//!
//! Invariants:
//! - Only the outermost allocator call of a thread is interpreted. glibc calls its own entry
//!   points (`realloc(NULL, n)` → `malloc`, `realloc(p, 0)` → `free`, a large `malloc` →
//!   `mmap`, `reallocarray` tail-calls `realloc`); counting those too would record one
//!   allocation twice. A call is nested when its stack pointer is at or below the pending outer
//!   call's (see `PendingCall::entry_sp`).
//! - The user stack is captured at the allocation's return, where the frame-pointer chain is
//!   intact from the caller down; at entry glibc's `malloc` has already pushed a register and
//!   the caller would be lost. It is walked here ([`walk_user_stack`]) a page at a time, not by
//!   `bpf_get_stack`, whose walk reads each frame alone and faults at the end of every stack.
//! - A process is traced while it has a `STATS` entry; every program returns at once for any
//!   other process. That entry names the process's slot: its own small maps (OWN_*, which
//!   userspace reads and empties without walking anyone else's), and the shared ALLOCS and
//!   STACKS take what its own have no room for (counted, so they are read too). Every failure
//!   path bumps a counter in that entry (per CPU, so no atomics are needed). Nothing is
//!   dropped silently.
//! - With `--combined-only`, COMBINED equals ALLOCS summed by stack at every moment: each
//!   insertion into ALLOCS adds its block to its stack's total and each removal subtracts it,
//!   with atomic adds (several CPUs update one stack's total at once).
//! - With `--sample-rate N`, a thread records its allocations number 0, N, 2N, ... (a
//!   per-thread counter, not a clock): any N consecutive allocations of a thread record one.

#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomics lack `fetch_add` there; the
// intrinsic lowers to BPF's own atomic add (`lock *(u64 *)(r + 0) += r`). See `atomic_add`.
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic_xadd: see above")
)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST,
        bpf_map_type,
    },
    btf_maps::{self, ArrayOfMaps},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::{btf_map, map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use memleak_common::{
    AllocInfo, AllocKey, CallKind, Cookie, Counter, EntryPoint, HANDOVER_SIGNAL, KERNEL_TGID,
    KernelFields, NO_SLOT, NestedMmap, OWN_ALLOCS_FLAGS, OWN_STACKS_FLAGS, PAGE_KEY_BASE,
    PendingCall, ProcessLive, ProcessStats, SLOTS, STACK_DEPTH, StackFrames, StackKey, StackTotal,
    ThreadCalls, TraceConfig, TraceEvent,
};

// A process's own maps are created by userspace, at the sizes it chooses (the kernel does not
// hold inner hash maps to their template's size); these are their templates.
const PREALLOCATED: usize = OWN_ALLOCS_FLAGS as usize;
const ALLOCATED_AS_USED: usize = OWN_STACKS_FLAGS as usize;
const _: () = assert!(OWN_STACKS_FLAGS == BPF_F_NO_PREALLOC);
type OwnAllocs = btf_maps::HashMap<u64, AllocInfo, 1, PREALLOCATED>;
type OwnStacks = btf_maps::HashMap<u64, StackFrames, 1, ALLOCATED_AS_USED>;
type OwnAllocatorMaps = btf_maps::HashMap<u64, u64, 1, PREALLOCATED>;
type OwnAltstacks = btf_maps::HashMap<u32, u64, 1, PREALLOCATED>;

/// Each traced process's outstanding allocations (address → info), by its slot: small maps
/// that userspace reads and drops whole, without walking anyone else's.
#[btf_map]
static OWN_ALLOCS: ArrayOfMaps<OwnAllocs, { SLOTS as usize }> = ArrayOfMaps::new();

/// Each traced process's stacks (stack id → frames), by its slot.
#[btf_map]
static OWN_STACKS: ArrayOfMaps<OwnStacks, { SLOTS as usize }> = ArrayOfMaps::new();

/// The mappings the allocator made for itself (arenas, segments, extents), by slot: their
/// start → length. Neither blocks nor roots.
#[btf_map]
static OWN_ALLOCATOR_MAPS: ArrayOfMaps<OwnAllocatorMaps, { SLOTS as usize }> = ArrayOfMaps::new();

/// Each thread's alternate signal stack, as it registered it with `sigaltstack`, by slot:
/// thread id → `ss_sp`. The kernel holds that pointer, so it is a root.
#[btf_map]
static OWN_ALTSTACKS: ArrayOfMaps<OwnAltstacks, { SLOTS as usize }> = ArrayOfMaps::new();

// Sizes here are defaults; userspace resizes ALLOCS and STACKS at load time. They take what a
// process's own maps have no room for (and everything of the kernel's allocators).
#[map]
static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Each thread's pending allocator call, in its own storage: no hashing, no lock shared with
/// other threads, no limit on threads, and nothing left for userspace to clean.
#[btf_map]
static THREADS: TaskStorage<ThreadCalls> = TaskStorage::new();

/// A task storage map: a value per thread, kept in the thread's `task_struct` and freed with
/// it. aya-ebpf 0.3 has none; this is the BTF definition libbpf and aya read (the kernel asks
/// for an `int` key, no entry limit and `BPF_F_NO_PREALLOC`).
#[repr(C)]
struct TaskStorage<V> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The calling thread's value, made (zeroed) when it has none.
    #[inline(always)]
    fn current(&self) -> Option<*mut V> {
        // SAFETY: helper calls; the map pointer is this map's, the task the current one.
        let value = unsafe {
            generated::bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                generated::bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                BPF_LOCAL_STORAGE_GET_F_CREATE as u64,
            )
        };
        (!value.is_null()).then_some(value.cast())
    }
}

#[map]
static STACKS: HashMap<StackKey, StackFrames> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

#[map]
static STACK_SCRATCH: PerCpuArray<StackWork> = PerCpuArray::with_max_entries(1, 0);

/// A CPU's buffers for capturing a stack: the frames, and what the user stack's walk needs
/// between its steps. One map value, so each step looks it up once.
#[repr(C)]
struct StackWork {
    frames: StackFrames,
    walk: Walk,
    /// A copy of the stack from a frame to the end of its page: [walk.window,
    /// walk.window_end).
    window: [u64; STACK_WINDOW],
}

/// Words of user stack read at once by [`walk_user_stack`]: a page (a power of two).
const STACK_WINDOW: usize = 512;
const PAGE: u64 = 4096;

#[map]
static STATS: PerCpuHashMap<u32, ProcessStats> = PerCpuHashMap::with_max_entries(4096, 0);

/// Each traced process's live heap and its peak, by slot (see `ProcessLive`).
#[map]
static LIVE: Array<ProcessLive> = Array::with_max_entries(SLOTS, 0);

#[map]
static COMBINED: HashMap<StackKey, StackTotal> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

#[map]
static SAMPLES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static HANDOVERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(1024, 0);

/// Set by userspace at load time (read-only data; see `KernelFields`).
#[unsafe(no_mangle)]
static KERNEL_FIELDS: KernelFields = KernelFields::ZERO;

/// Set by userspace at load time (read-only data; see `TraceConfig`).
#[unsafe(no_mangle)]
static TRACE_CONFIG: TraceConfig = TraceConfig::ZERO;

#[inline(always)]
fn flag(flag: u32) -> bool {
    // SAFETY: a read-only global, set before load.
    unsafe { core::ptr::read_volatile(&TRACE_CONFIG.flags) & flag != 0 }
}

/// Adds a block to (or, with `remove`, takes it from) its stack's total (`--combined-only`).
#[inline(always)]
fn combine(process: &Process, info: &AllocInfo, remove: bool) {
    if !flag(TraceConfig::COMBINED) {
        return;
    }
    let key = StackKey {
        stack_id: info.stack_id,
        tgid: process.tgid,
        _pad: 0,
    };
    let mut total = COMBINED.get_ptr_mut(&key);
    if total.is_none() {
        let zero = StackTotal {
            bytes: 0,
            allocations: 0,
        };
        // Another CPU creating it first is fine (BPF_NOEXIST): both then add to the one entry.
        let _ = COMBINED.insert(&key, &zero, BPF_NOEXIST as u64);
        total = COMBINED.get_ptr_mut(&key);
    }
    let Some(total) = total else {
        process.count(Counter::StackMapFull);
        return;
    };
    let (bytes, allocations) = match remove {
        false => (info.size, 1u64),
        true => (info.size.wrapping_neg(), 1u64.wrapping_neg()),
    };
    // SAFETY: the map value lives as long as the entry, and is only updated atomically.
    unsafe {
        atomic_add(&raw mut (*total).bytes, bytes);
        atomic_add(&raw mut (*total).allocations, allocations);
    }
}

/// `*dst += value`, atomically (several CPUs update one stack's total at once).
///
/// # Safety
/// `dst` points to a live, aligned `u64` that is only ever updated atomically.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, value: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's promise.
    unsafe {
        use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
        atomic_xadd::<u64, u64, { Relaxed }>(dst, value);
    }
    // Host builds (clippy, tests) have core's atomics.
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's promise.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(dst)
            .fetch_add(value, core::sync::atomic::Ordering::Relaxed);
    }
}

/// `*dst += value`, atomically, and what `*dst` was just before.
///
/// # Safety
/// As [`atomic_add`].
#[inline(always)]
unsafe fn atomic_fetch_add(dst: *mut u64, value: u64) -> u64 {
    // Sequentially consistent: LLVM's BPF backend encodes a relaxed fetch-and-add as the plain
    // atomic add (no BPF_FETCH), and the register then holds the operand, not the old value.
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's promise.
    unsafe {
        use core::intrinsics::{AtomicOrdering::SeqCst, atomic_xadd};
        atomic_xadd::<u64, u64, { SeqCst }>(dst, value)
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's promise.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(dst)
            .fetch_add(value, core::sync::atomic::Ordering::Relaxed)
    }
}

/// How often [`atomic_raise`] tries before it gives up: each failure is another CPU's raise.
const RAISE_TRIES: usize = 8;

/// `*dst = max(*dst, value)`, atomically: true when `value` became the maximum, `None` when
/// other CPUs changed `*dst` under each of [`RAISE_TRIES`] tries.
///
/// # Safety
/// As [`atomic_add`].
#[inline(always)]
unsafe fn atomic_raise(dst: *mut u64, value: u64) -> Option<bool> {
    // SAFETY: the caller's promise.
    let mut seen = unsafe { core::ptr::read_volatile(dst) };
    for _ in 0..RAISE_TRIES {
        if value <= seen {
            return Some(false);
        }
        #[cfg(target_arch = "bpf")]
        // SAFETY: the caller's promise.
        let (now, swapped) = unsafe {
            use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};
            atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(dst, seen, value)
        };
        #[cfg(not(target_arch = "bpf"))]
        // SAFETY: the caller's promise.
        let (now, swapped) = match unsafe { core::sync::atomic::AtomicU64::from_ptr(dst) }
            .compare_exchange(
                seen,
                value,
                core::sync::atomic::Ordering::Relaxed,
                core::sync::atomic::Ordering::Relaxed,
            ) {
            Ok(now) => (now, true),
            Err(now) => (now, false),
        };
        if swapped {
            return Some(true);
        }
        seen = now;
    }
    None
}

/// One `--trace` line; a full ring buffer is a drop.
#[inline(always)]
fn trace_event(process: &Process, kind: u32, addr: u64, size: u64, frame: u64) {
    if !flag(TraceConfig::TRACE) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = TraceEvent {
        kind,
        pid: tgid_of(pid_tgid),
        tid: pid_tgid as u32,
        _pad: 0,
        addr,
        size,
        frame,
        // SAFETY: plain helper call.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output(&event, 0).is_err() {
        process.count(Counter::TraceLost);
    }
}

/// Whether this allocation is recorded under `--sample-rate` (always without it).
#[inline(always)]
fn sampled(process: &Process) -> bool {
    // SAFETY: a read-only global, set before load.
    let rate = unsafe { core::ptr::read_volatile(&TRACE_CONFIG.sample_rate) } as u64;
    if rate <= 1 {
        return true;
    }
    let pid_tgid = process.pid_tgid;
    let seen = match SAMPLES.get_ptr_mut(&pid_tgid) {
        // SAFETY: a thread's counter is only updated by that thread (one CPU at a time).
        Some(seen) => unsafe {
            let before = *seen;
            *seen = before + 1;
            before
        },
        None => {
            let _ = SAMPLES.insert(&pid_tgid, &1, 0);
            0
        }
    };
    if seen % rate == 0 {
        true
    } else {
        process.count(Counter::SampledOut);
        false
    }
}

const MAP_FAILED: u64 = u64::MAX;
/// Map update errors (negated errno): the key exists, the map is full.
const EEXIST: i32 = -17;
const E2BIG: i32 = -7;

/// A traced process, as one program call sees it: found once per call (its STATS entry), then
/// counted into and recorded for without looking it up again.
#[derive(Clone, Copy)]
struct Process {
    /// The calling thread (0 for the kernel's allocators).
    pid_tgid: u64,
    tgid: u32,
    /// Its counters on this CPU, and its slot.
    stats: *mut ProcessStats,
}

impl Process {
    /// The calling thread's process, if it is traced (registered in STATS by userspace).
    #[inline(always)]
    fn current() -> Option<Self> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = tgid_of(pid_tgid);
        STATS.get_ptr_mut(&tgid).map(|stats| Self {
            pid_tgid,
            tgid,
            stats,
        })
    }

    /// The kernel's allocators, while `kernel` traces them.
    #[inline(always)]
    fn kernel() -> Option<Self> {
        STATS.get_ptr_mut(&KERNEL_TGID).map(|stats| Self {
            pid_tgid: 0,
            tgid: KERNEL_TGID,
            stats,
        })
    }

    #[inline(always)]
    fn count(&self, counter: Counter) {
        // SAFETY: per-CPU values: only this CPU writes them while the program runs.
        unsafe { (*self.stats).counters[counter as usize] += 1 };
    }

    #[inline(always)]
    fn slot(&self) -> u32 {
        // SAFETY: as above; userspace set the slot before the process was traced.
        unsafe { (*self.stats).slot }
    }

    /// The calling thread's pending-call record (made zeroed on its first call), or `None`,
    /// counted (`PendingMapFull`), when its storage cannot be had.
    #[inline(always)]
    fn thread(&self) -> Option<&'static mut ThreadCalls> {
        match THREADS.current() {
            // SAFETY: the calling thread's own storage; only its programs touch it, one at a
            // time.
            Some(thread) => Some(unsafe { &mut *thread }),
            None => {
                self.count(Counter::PendingMapFull);
                None
            }
        }
    }

    fn shared_key(&self, addr: u64) -> AllocKey {
        AllocKey {
            addr,
            tgid: self.tgid,
            _pad: 0,
        }
    }

    /// Records a block: in the process's own map, or in the shared one when its own is full
    /// (or it has none), and adds it to the live heap. False when neither had room.
    #[inline(always)]
    fn insert_block(&self, addr: u64, info: &AllocInfo) -> bool {
        let inserted = 'inserted: {
            if let Some(own) = OWN_ALLOCS.get(self.slot()) {
                match own.insert(&addr, info, 0) {
                    Ok(()) => break 'inserted true,
                    Err(E2BIG) => {}
                    Err(_) => break 'inserted false,
                }
            }
            self.count(Counter::SharedAllocs);
            ALLOCS.insert(&self.shared_key(addr), info, 0).is_ok()
        };
        if inserted {
            self.live_add(info);
        }
        inserted
    }

    /// Its live heap, when it is followed.
    #[inline(always)]
    fn live(&self) -> Option<*mut ProcessLive> {
        if !self.follows_heap() {
            return None;
        }
        LIVE.get_ptr_mut(self.slot())
    }

    /// A block joins the live heap: its bytes are added, and the peak raised to the sum.
    #[inline(always)]
    fn live_add(&self, info: &AllocInfo) {
        let Some(live) = self.live() else {
            return;
        };
        // SAFETY: the array's value lives as long as the map, and is only updated atomically.
        unsafe {
            let now = atomic_fetch_add(&raw mut (*live).bytes, info.size).wrapping_add(info.size);
            match atomic_raise(&raw mut (*live).peak_bytes, now) {
                Some(true) => core::ptr::write_volatile(&raw mut (*live).peak_stack, info.stack_id),
                Some(false) => {}
                None => self.count(Counter::PeakContended),
            }
        }
    }

    /// A block leaves the live heap.
    #[inline(always)]
    fn live_sub(&self, info: &AllocInfo) {
        let Some(live) = self.live() else {
            return;
        };
        // SAFETY: as in live_add.
        unsafe { atomic_add(&raw mut (*live).bytes, info.size.wrapping_neg()) };
    }

    /// The record of an outstanding block, left in place.
    #[inline(always)]
    fn block(&self, addr: u64) -> Option<AllocInfo> {
        if let Some(own) = OWN_ALLOCS.get(self.slot())
            && let Some(info) = own.get_ptr(&addr)
        {
            // SAFETY: the value is copied out at once.
            return Some(unsafe { *info });
        }
        // SAFETY: the value is copied out at once.
        unsafe { ALLOCS.get(&self.shared_key(addr)) }.copied()
    }

    /// Whether its live heap is followed (not the kernel's, which has no slot; not with
    /// `--no-peak`).
    #[inline(always)]
    fn follows_heap(&self) -> bool {
        flag(TraceConfig::HEAP) && self.slot() != NO_SLOT
    }

    /// Forgets an outstanding block without reading it first (its heap not followed); false
    /// when it was not outstanding.
    #[inline(always)]
    fn remove_block(&self, addr: u64) -> bool {
        if let Some(own) = OWN_ALLOCS.get(self.slot())
            && own.remove(&addr).is_ok()
        {
            return true;
        }
        ALLOCS.remove(&self.shared_key(addr)).is_ok()
    }

    /// Takes an outstanding block's record out, and the block out of the live heap.
    #[inline(always)]
    fn take_block(&self, addr: u64) -> Option<AllocInfo> {
        let info = 'taken: {
            if let Some(own) = OWN_ALLOCS.get(self.slot())
                && let Some(info) = own.get_ptr(&addr)
            {
                // SAFETY: the value is copied out before the entry is removed.
                let info = unsafe { *info };
                // Another CPU removing it first (the kernel's double free) accounts for it.
                break 'taken own.remove(&addr).is_ok().then_some(info);
            }
            let key = self.shared_key(addr);
            // SAFETY: the value is copied out before the entry is removed.
            let info = unsafe { ALLOCS.get(&key) }.copied()?;
            ALLOCS.remove(&key).is_ok().then_some(info)
        };
        if let Some(info) = &info {
            self.live_sub(info);
        }
        info
    }
}

#[inline(always)]
fn stack_pointer<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: the context of a (ret)probe program is the probed task's pt_regs.
    unsafe { (*regs).rsp }
}

/// The probe's attach cookie ([`Cookie`]).
#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> Cookie {
    // SAFETY: plain helper call on the program's own context.
    Cookie(unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) })
}

/// Whether the probed call was made from inside the allocator object (see [`Cookie`]): at a
/// function's entry the return address is at the stack pointer, and the probe address
/// locates the object's text in this process.
#[inline(always)]
fn called_by_allocator(ctx: &ProbeContext) -> bool {
    let cookie = cookie(ctx);
    let text_len = cookie.text_len();
    if text_len == 0 {
        return false;
    }
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: the context of a probe program is the probed task's pt_regs.
    let ip = unsafe { (*regs).rip };
    let sp = stack_pointer(ctx);
    let text_start = ip.wrapping_sub(cookie.probe_to_text_start());
    // SAFETY: bpf_probe_read_user validates the user address.
    match unsafe { bpf_probe_read_user(sp as *const u64) } {
        Ok(return_addr) => return_addr.wrapping_sub(text_start) < text_len,
        Err(_) => false,
    }
}

fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

/// Remembers an allocator call until its return, unless it is nested in another one.
#[inline(always)]
fn enter(ctx: &ProbeContext, kind: CallKind, size: u64, old_addr: u64, out_ptr: u64) -> u32 {
    let Some(process) = Process::current() else {
        return 0;
    };
    let Some(thread) = process.thread() else {
        return 0;
    };
    let entry_sp = stack_pointer(ctx);
    if thread.has_pending != 0 {
        let outer_sp = thread.pending.entry_sp;
        // Below the outer call's entry: nested. At the same stack pointer: a tail call (glibc's
        // reallocarray jumps to realloc), which returns the outer call's result.
        if entry_sp <= outer_sp {
            // The allocator mapping memory for itself: remember where, at the return.
            if kind as u32 == CallKind::Mmap as u32 && entry_sp < outer_sp {
                thread.nested = NestedMmap {
                    entry_sp,
                    len: size,
                };
                thread.has_nested = 1;
            }
            return 0;
        }
        process.count(Counter::StalePending);
    }
    // The old block leaves now, while it is still ours (see PendingCall::old).
    let old = match old_addr {
        0 => None,
        _ => process.take_block(old_addr),
    };
    if let Some(old) = &old {
        combine(&process, old, true);
    }
    let call = PendingCall {
        kind: kind as u32,
        old_found: old.is_some() as u32,
        entry_sp,
        size,
        old_addr,
        out_ptr,
        old: old.unwrap_or(AllocInfo {
            size: 0,
            timestamp_ns: 0,
            stack_id: 0,
        }),
    };
    thread.pending = call;
    thread.has_pending = 1;
    thread.has_nested = 0;
    0
}

/// Finishes the outermost pending call of this thread, if this return is its return.
#[inline(always)]
fn leave(ctx: &RetProbeContext) -> u32 {
    let Some(process) = Process::current() else {
        return 0;
    };
    // Made if missing (the entry made it already), so that none is a failure.
    let Some(thread) = process.thread() else {
        return 0;
    };
    if thread.has_pending == 0 {
        // The entry was nested, or not the program's.
        return 0;
    }
    let call = thread.pending;
    // At return the caller's stack pointer is one slot above the entry's: a return at or below
    // the outer call's entry is a nested call returning.
    let sp = stack_pointer(ctx);
    if sp <= call.entry_sp {
        let nested = thread.nested;
        if thread.has_nested != 0 && sp == nested.entry_sp + 8 {
            thread.has_nested = 0;
            let addr: u64 = ctx.ret();
            if addr != MAP_FAILED
                && !OWN_ALLOCATOR_MAPS
                    .get(process.slot())
                    .is_some_and(|own| own.insert(&addr, &nested.len, 0).is_ok())
            {
                process.count(Counter::AllocMapFull);
            }
        }
        return 0;
    }
    thread.has_pending = 0;
    let ret: u64 = ctx.ret();
    match call.kind {
        k if k == CallKind::Plain as u32 => {
            if ret != 0 {
                record(ctx, &process, ret, call.size);
            }
        }
        k if k == CallKind::Realloc as u32 => {
            // realloc(NULL, n) allocates; realloc(p, 0) frees p (glibc returns NULL); a failed
            // realloc (NULL with n > 0) leaves p alone; otherwise p is gone and ret is the block
            // (even when it did not move: the block now has this call's size and stack).
            let succeeded = ret != 0 || call.size == 0;
            if call.old_addr != 0 {
                settle_old(&process, &call, succeeded, Counter::FreeUnknown);
            }
            if ret != 0 {
                record(ctx, &process, ret, call.size);
            }
        }
        k if k == CallKind::PosixMemalign as u32 => {
            if ret as u32 == 0 {
                // SAFETY: bpf_probe_read_user validates the user address.
                match unsafe { bpf_probe_read_user(call.out_ptr as *const u64) } {
                    Ok(block) if block != 0 => record(ctx, &process, block, call.size),
                    Ok(_) => {}
                    Err(_) => process.count(Counter::ReadFailed),
                }
            }
        }
        k if k == CallKind::Dealloc as u32 => {
            settle_old(&process, &call, true, Counter::FreeUnknown);
        }
        k if k == CallKind::Mmap as u32 => {
            if ret != MAP_FAILED {
                record(ctx, &process, ret, call.size);
            }
        }
        k if k == CallKind::Mremap as u32 => {
            // A mapping never traced (made by the loader, say) counts as untracked, not as an
            // unknown free: the result is traced from here on either way.
            settle_old(&process, &call, ret != MAP_FAILED, Counter::MunmapUntracked);
            if ret != MAP_FAILED {
                record(ctx, &process, ret, call.size);
            }
        }
        _ => {}
    }
    0
}

/// How far above the stack pointer a frame may lie: a frame pointer beyond is not one (the
/// registers of glibc's start code hold other values at the chain's end).
const MAX_STACK_SPAN: u64 = 1 << 30;

/// The user stack at a return probe, by its frame pointers, into `work.frames`, and its hash
/// ([`hash_frames`]'s, computed as it goes): where the call returns to, then each caller's
/// return address, ended by a 0 when shorter. The walk stops where the chain leaves the stack:
/// a frame pointer not above the last one, unaligned, or farther than [`MAX_STACK_SPAN`] from
/// the stack pointer. The kernel's own walker (`bpf_get_stack`) reads each frame alone and
/// reads on until a read faults, at the end of every stack; on these machines that fault costs
/// more than the rest of the walk. The loop is `bpf_loop`'s, with its state in the map value
/// (`work.walk`) rather than on the stack: the verifier does not follow a map's contents, so
/// it checks one step for any state (a plain loop took it most of a second at every load).
#[inline(always)]
fn walk_user_stack<C: EbpfContext>(ctx: &C, work: &mut StackWork) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: the context of a (ret)probe program is the probed task's pt_regs.
    let (ip, fp, sp) = unsafe { ((*regs).rip, (*regs).rbp, (*regs).rsp) };
    work.frames[0] = ip;
    let start = Walk {
        fp,
        sp,
        window: 0,
        window_end: 0,
        len: 1,
        hash: hash_step(FNV_OFFSET, ip),
    };
    // Volatile, here and after the loop: the compiler cannot see that the steps change it.
    // SAFETY: a plain store into this CPU's buffer.
    unsafe { core::ptr::write_volatile(&raw mut work.walk, start) };
    // SAFETY: `step` has the callback's signature; it finds its state in STACK_SCRATCH.
    unsafe {
        generated::bpf_loop(
            (STACK_DEPTH - 1).div_ceil(FRAMES_PER_STEP) as u32,
            step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    // SAFETY: a plain load from this CPU's buffer.
    let Walk { len, hash, .. } = unsafe { core::ptr::read_volatile(&raw const work.walk) };
    if let Some(end) = work.frames.get_mut(len as usize) {
        *end = 0;
    }
    if hash == 0 { 1 } else { hash }
}

/// The state of [`walk_user_stack`] between its steps.
#[repr(C)]
#[derive(Clone, Copy)]
struct Walk {
    fp: u64,
    sp: u64,
    /// The window copied: [window, window_end) of the stack.
    window: u64,
    window_end: u64,
    /// Frames stored so far.
    len: u64,
    hash: u64,
}

/// Frames [`step`] walks per call: a few, so that `bpf_loop`'s call is paid once for them.
const FRAMES_PER_STEP: usize = 4;

/// Up to [`FRAMES_PER_STEP`] frames of [`walk_user_stack`]: 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn step(_index: u32, _context: *mut core::ffi::c_void) -> i64 {
    let Some(work) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's buffers, used by one program at a time.
    let work = unsafe { &mut *work };
    for _ in 0..FRAMES_PER_STEP {
        if !frame(work) {
            return 1;
        }
    }
    0
}

/// One frame: false at the chain's end. Frames are read from a copy of the stack from a frame
/// to the end of its page (one read per page rather than one per frame, and never past the
/// page, which is mapped: the frame is in it); a frame that straddles two pages is copied
/// alone.
#[inline(always)]
fn frame(work: &mut StackWork) -> bool {
    let walk = &mut work.walk;
    let fp = walk.fp;
    let len = walk.len as usize;
    if len >= STACK_DEPTH || fp < walk.sp || fp - walk.sp > MAX_STACK_SPAN || fp & 7 != 0 {
        return false;
    }
    if !(fp >= walk.window && fp + 16 <= walk.window_end) {
        // To the end of the frame's page (all of it from a frame at its start: `rest` is
        // 1..=PAGE, written so that the verifier sees the bound); a frame that straddles two
        // pages alone.
        let rest = PAGE - (fp & (PAGE - 1));
        let size = if rest < 16 {
            16
        } else {
            ((rest - 1) & (8 * STACK_WINDOW as u64 - 1)) + 1
        };
        // SAFETY: the window is STACK_WINDOW words, at least `size` bytes; the helper validates
        // the user address.
        let read = unsafe {
            generated::bpf_probe_read_user(
                work.window.as_mut_ptr().cast(),
                size as u32,
                fp as *const core::ffi::c_void,
            )
        } == 0;
        if !read || size < 16 {
            return false;
        }
        (walk.window, walk.window_end) = (fp, fp + size);
    }
    // Masked for the verifier; inside the window by the check above.
    let at = (((fp - walk.window) / 8) as usize) & (STACK_WINDOW - 1);
    let (next, ret) = (work.window[at], work.window[(at + 1) & (STACK_WINDOW - 1)]);
    if ret == 0 {
        return false;
    }
    if let Some(slot) = work.frames.get_mut(len) {
        *slot = ret;
    }
    walk.hash = hash_step(walk.hash, ret);
    walk.len += 1;
    if next <= fp {
        return false;
    }
    walk.fp = next;
    true
}

/// Hashes the captured frames; 0 is reserved for "no stack".
#[inline(always)]
fn hash_frames(frames: &StackFrames, len: usize) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, frame) in frames.iter().enumerate() {
        if i >= len {
            break;
        }
        hash = hash_step(hash, *frame);
    }
    if hash == 0 { 1 } else { hash }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One frame into the hash (FNV-1a over whole words, with a shift to mix the high bits in).
#[inline(always)]
fn hash_step(hash: u64, frame: u64) -> u64 {
    let hash = (hash ^ frame).wrapping_mul(0x0000_0100_0000_01b3);
    hash ^ (hash >> 29)
}

/// Captures the stack (`BPF_F_USER_STACK` in `flags`: the user stack, else the kernel's) into
/// the process's stack map (or the shared one, when its own is full) and returns its key, or 0
/// (counted) on failure.
#[inline(always)]
fn capture_stack<C: EbpfContext>(ctx: &C, process: &Process, flags: u64) -> u64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        process.count(Counter::StackFailed);
        return 0;
    };
    let stack_id = if flags & BPF_F_USER_STACK as u64 != 0 {
        // SAFETY: this CPU's buffer, used by one program at a time.
        walk_user_stack(ctx, unsafe { &mut *scratch })
    } else {
        let size = core::mem::size_of::<StackFrames>() as u32;
        // SAFETY: the frames are this CPU's buffer of exactly `size` bytes.
        let copied = unsafe {
            generated::bpf_get_stack(
                ctx.as_ptr(),
                (&raw mut (*scratch).frames).cast(),
                size,
                flags,
            )
        };
        if copied <= 0 {
            process.count(Counter::StackFailed);
            return 0;
        }
        // SAFETY: the helper filled the buffer (and zeroed its tail).
        hash_frames(
            unsafe { &(*scratch).frames },
            (copied as usize / 8).min(STACK_DEPTH),
        )
    };
    // SAFETY: filled, and ended by a 0 when shorter (readers stop at the first 0).
    let frames = unsafe { &(*scratch).frames };
    if let Some(own) = OWN_STACKS.get(process.slot()) {
        if own.get_ptr(&stack_id).is_some() {
            return stack_id;
        }
        match own.insert(&stack_id, frames, BPF_NOEXIST as u64) {
            // Another thread storing the same stack first is fine.
            Ok(()) | Err(EEXIST) => return stack_id,
            Err(E2BIG) => process.count(Counter::SharedStacks),
            Err(_) => {
                process.count(Counter::StackFailed);
                return 0;
            }
        }
    }
    let key = StackKey {
        stack_id,
        tgid: process.tgid,
        _pad: 0,
    };
    if STACKS.get_ptr(&key).is_none()
        && let Err(err) = STACKS.insert(&key, frames, BPF_NOEXIST as u64)
    {
        match err {
            EEXIST => {}
            E2BIG => {
                process.count(Counter::StackMapFull);
                return 0;
            }
            _ => {
                process.count(Counter::StackFailed);
                return 0;
            }
        }
    }
    stack_id
}

/// Records an allocation the program made, with its user stack.
#[inline(always)]
fn record(ctx: &RetProbeContext, process: &Process, addr: u64, size: u64) {
    record_with_stack(ctx, process, addr, size, BPF_F_USER_STACK as u64);
}

#[inline(always)]
fn record_with_stack<C: EbpfContext>(
    ctx: &C,
    process: &Process,
    addr: u64,
    size: u64,
    stack_flags: u64,
) {
    if !sampled(process) {
        return;
    }
    let stack_id = capture_stack(ctx, process, stack_flags);
    let info = AllocInfo {
        size,
        timestamp_ns: if flag(TraceConfig::AGES) {
            // SAFETY: plain helper call.
            unsafe { bpf_ktime_get_ns() }
        } else {
            0
        },
        stack_id,
    };
    if process.tgid == KERNEL_TGID
        && let Some(old) = process.block(addr)
    {
        // Its free was missed: the new block replaces it.
        combine(process, &old, true);
        trace_event(process, TraceEvent::FREE, addr, old.size, 0);
        process.count(Counter::MissingFree);
    }
    if !process.insert_block(addr, &info) {
        process.count(Counter::AllocMapFull);
        return;
    }
    process.count(Counter::Allocs);
    // SAFETY: per-CPU values: only this CPU writes them while the program runs.
    unsafe { (*process.stats).allocated_bytes += size };
    combine(process, &info, false);
    if flag(TraceConfig::TRACE) {
        let frame = match (stack_id, STACK_SCRATCH.get_ptr(0)) {
            // SAFETY: this CPU's buffer, just filled by capture_stack.
            (id, Some(work)) if id != 0 => unsafe { (*work).frames[0] },
            _ => 0,
        };
        trace_event(process, TraceEvent::ALLOC, addr, size, frame);
    }
}

/// Forgets an outstanding block (counted as a free). False when it was not outstanding; the
/// caller counts that, as it alone knows what it means.
#[inline(always)]
fn release(process: &Process, addr: u64) -> bool {
    // Nothing needs its size: a delete alone.
    if !flag(TraceConfig::COMBINED | TraceConfig::TRACE) && !process.follows_heap() {
        let found = process.remove_block(addr);
        if found {
            process.count(Counter::Frees);
        }
        return found;
    }
    let Some(info) = process.take_block(addr) else {
        return false;
    };
    process.count(Counter::Frees);
    combine(process, &info, true);
    trace_event(process, TraceEvent::FREE, addr, info.size, 0);
    true
}

/// The old block of a `realloc`, `mremap` or shim dealloc at the call's return: it was
/// removed at entry; a call that `succeeded` freed it (counted, or `unknown` when it was never
/// recorded), a failed one leaves it as it was.
#[inline(always)]
fn settle_old(process: &Process, call: &PendingCall, succeeded: bool, unknown: Counter) {
    match (call.old_found != 0, succeeded) {
        (true, true) => {
            process.count(Counter::Frees);
            trace_event(process, TraceEvent::FREE, call.old_addr, call.old.size, 0);
        }
        (false, true) => process.count(unknown),
        (true, false) => {
            if process.insert_block(call.old_addr, &call.old) {
                combine(process, &call.old, false);
            } else {
                process.count(Counter::AllocMapFull);
            }
        }
        (false, false) => {}
    }
}

/// True when a free-like entry runs inside a pending allocator call of its thread (and so is
/// accounted by that call's return). A pending record the free is not nested in is stale.
#[inline(always)]
fn nested_in_pending<C: EbpfContext>(ctx: &C, process: &Process) -> bool {
    // Without it, whether the free is nested cannot be told: counted, and taken as the
    // program's.
    let Some(thread) = process.thread() else {
        return false;
    };
    if thread.has_pending == 0 {
        return false;
    }
    if stack_pointer(ctx) < thread.pending.entry_sp {
        return true;
    }
    thread.has_pending = 0;
    process.count(Counter::StalePending);
    false
}

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// Every allocator entry point, told apart by the cookie (one link per object).
#[inline(always)]
fn on_entry(ctx: &ProbeContext) -> u32 {
    match cookie(ctx).entry() {
        Some(EntryPoint::Malloc | EntryPoint::Valloc) => {
            // `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
            enter(ctx, CallKind::Plain, arg(ctx, 0), 0, 0)
        }
        Some(EntryPoint::Calloc) => {
            let size = arg(ctx, 0).wrapping_mul(arg(ctx, 1));
            enter(ctx, CallKind::Plain, size, 0, 0)
        }
        Some(EntryPoint::Realloc) => enter(ctx, CallKind::Realloc, arg(ctx, 1), arg(ctx, 0), 0),
        Some(EntryPoint::Reallocarray) => {
            let size = arg(ctx, 1).wrapping_mul(arg(ctx, 2));
            enter(ctx, CallKind::Realloc, size, arg(ctx, 0), 0)
        }
        Some(EntryPoint::PosixMemalign) => {
            enter(ctx, CallKind::PosixMemalign, arg(ctx, 2), 0, arg(ctx, 0))
        }
        // `memalign(alignment, size)` and `aligned_alloc(alignment, size)`.
        Some(EntryPoint::Memalign) => enter(ctx, CallKind::Plain, arg(ctx, 1), 0, 0),
        // Mappings the allocator makes for itself (arenas, thread stacks) are not the program's.
        Some(EntryPoint::Mmap) if !called_by_allocator(ctx) => {
            enter(ctx, CallKind::Mmap, arg(ctx, 1), 0, 0)
        }
        Some(EntryPoint::Mremap) if !called_by_allocator(ctx) => {
            enter(ctx, CallKind::Mremap, arg(ctx, 2), arg(ctx, 0), 0)
        }
        Some(EntryPoint::Mmap | EntryPoint::Mremap) => 0,
        Some(EntryPoint::Free) => on_free(ctx),
        Some(EntryPoint::Munmap) => on_munmap(ctx),
        Some(EntryPoint::Sigaltstack) => on_sigaltstack(ctx),
        Some(EntryPoint::Ptrace) => on_ptrace(ctx),
        Some(EntryPoint::RustAlloc | EntryPoint::RustAllocZeroed) => {
            enter(ctx, CallKind::Plain, arg(ctx, 0), 0, 0)
        }
        Some(EntryPoint::RustRealloc) => enter(ctx, CallKind::Realloc, arg(ctx, 3), arg(ctx, 0), 0),
        Some(EntryPoint::RustDealloc) => match arg(ctx, 0) {
            0 => 0,
            addr => enter(ctx, CallKind::Dealloc, 0, addr, 0),
        },
        None => {
            if let Some(process) = Process::current() {
                process.count(Counter::ReadFailed);
            }
            0
        }
    }
}

/// The entry program for multi-uprobe links (one link per object and process).
#[uprobe(multi)]
pub fn alloc_enter_multi(ctx: ProbeContext) -> u32 {
    on_entry(&ctx)
}

/// The same, for kernels without multi-uprobe links (one perf-event uprobe per entry point).
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    on_entry(&ctx)
}

/// Shared by every allocating entry point: interprets the outermost call's return.
#[uretprobe(multi)]
pub fn alloc_return_multi(ctx: RetProbeContext) -> u32 {
    leave(&ctx)
}

/// The same, for kernels without multi-uprobe links.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    leave(&ctx)
}

const PTRACE_TRACEME: u32 = 0;
const PTRACE_ATTACH: u32 = 16;
const PTRACE_SEIZE: u32 = 0x4206;

/// A traced process's `ptrace(request, pid, ...)` that would fail because we trace the
/// process it asks for (a process has one tracer): its `PTRACE_TRACEME`, or a
/// `PTRACE_ATTACH` or `PTRACE_SEIZE` of a process we trace. The thread is held before its
/// system call (a signal it gets here is delivered before the next instruction runs) and the
/// tracer, told which process is wanted (HANDOVERS), lets that process go first.
#[inline(always)]
fn on_ptrace(ctx: &ProbeContext) -> u32 {
    let Some(process) = Process::current() else {
        return 0;
    };
    // Both are C ints: the registers' upper halves are not theirs.
    let wanted = match arg(ctx, 0) as u32 {
        PTRACE_TRACEME => process.tgid,
        PTRACE_ATTACH | PTRACE_SEIZE => arg(ctx, 1) as u32,
        _ => return 0,
    };
    // SAFETY: a lookup only, in a map userspace writes.
    if wanted == 0 || unsafe { STATS.get(&wanted) }.is_none() {
        return 0;
    }
    let tid = process.pid_tgid as u32;
    if HANDOVERS.insert(&tid, &wanted, 0).is_err() {
        process.count(Counter::ReadFailed);
        return 0;
    }
    // SAFETY: signals the current thread only.
    unsafe { generated::bpf_send_signal_thread(HANDOVER_SIGNAL) };
    0
}

/// `stack_t` on x86-64.
#[repr(C)]
#[derive(Clone, Copy)]
struct StackT {
    ss_sp: u64,
    ss_flags: i32,
    _pad: u32,
    ss_size: u64,
}

const SS_DISABLE: i32 = 2;

/// Remembers the thread's alternate signal stack (or forgets it, when disabled).
#[inline(always)]
fn on_sigaltstack(ctx: &ProbeContext) -> u32 {
    let Some(process) = Process::current() else {
        return 0;
    };
    let tid = process.pid_tgid as u32;
    let Some(altstacks) = OWN_ALTSTACKS.get(process.slot()) else {
        process.count(Counter::ReadFailed);
        return 0;
    };
    let ss = arg(ctx, 0);
    if ss == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user validates the user address.
    match unsafe { bpf_probe_read_user(ss as *const StackT) } {
        Ok(stack) if stack.ss_flags & SS_DISABLE != 0 => {
            let _ = altstacks.remove(&tid);
        }
        Ok(stack) => {
            if altstacks.insert(&tid, &stack.ss_sp, 0).is_err() {
                process.count(Counter::ReadFailed);
            }
        }
        Err(_) => process.count(Counter::ReadFailed),
    }
    0
}

#[inline(always)]
fn on_free(ctx: &ProbeContext) -> u32 {
    let addr = arg(ctx, 0);
    if addr == 0 {
        return 0;
    }
    let Some(process) = Process::current() else {
        return 0;
    };
    if nested_in_pending(ctx, &process) {
        return 0;
    }
    // Only a miss pays for the caller check (a user-memory read).
    if !release(&process, addr) {
        let missing = if called_by_allocator(ctx) {
            Counter::AllocatorInternalFree
        } else {
            Counter::FreeUnknown
        };
        process.count(missing);
    }
    0
}

#[inline(always)]
fn on_munmap(ctx: &ProbeContext) -> u32 {
    let addr = arg(ctx, 0);
    let len = arg(ctx, 1);
    let Some(process) = Process::current() else {
        return 0;
    };
    if nested_in_pending(ctx, &process) || called_by_allocator(ctx) {
        // The allocator giving back a mapping of its own.
        if let Some(own) = OWN_ALLOCATOR_MAPS.get(process.slot()) {
            let _ = own.remove(&addr);
        }
        return 0;
    }
    let Some(info) = process.take_block(addr) else {
        process.count(Counter::MunmapUntracked);
        return 0;
    };
    combine(&process, &info, true);
    if len < info.size {
        // Unmapping the front of a traced mapping: the rest stays outstanding.
        let trimmed = AllocInfo {
            size: info.size - len,
            ..info
        };
        if process.insert_block(addr + len, &trimmed) {
            combine(&process, &trimmed, false);
        } else {
            process.count(Counter::AllocMapFull);
        }
    } else {
        process.count(Counter::Frees);
        trace_event(&process, TraceEvent::FREE, addr, info.size, 0);
    }
    0
}

// Kernel allocators: tracepoints, every CPU and process, recorded under KERNEL_TGID with the
// kernel stack. Tracing began while the kernel ran, so a free of an unknown block is expected
// (counted as FreeUnknown, which userspace treats as informational here).

/// kmalloc's ZERO_SIZE_PTR and NULL: not blocks.
const ZERO_SIZE_PTR: u64 = 16;

/// A field of the event record at the offset userspace configured.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: &u32) -> Option<T> {
    // SAFETY: a read-only global, set before load; the record read is checked by the helper.
    unsafe {
        let offset = core::ptr::read_volatile(offset) as usize;
        ctx.read_at::<T>(offset).ok()
    }
}

#[inline(always)]
fn kernel_alloc(ctx: &TracePointContext, addr: Option<u64>, size: Option<u64>) -> u32 {
    let Some(kernel) = Process::kernel() else {
        return 0;
    };
    match (addr, size) {
        (Some(addr), Some(size)) if addr > ZERO_SIZE_PTR => {
            record_with_stack(ctx, &kernel, addr, size, 0);
        }
        (Some(_), Some(_)) => {}
        _ => kernel.count(Counter::ReadFailed),
    }
    0
}

#[inline(always)]
fn kernel_free(addr: Option<u64>) -> u32 {
    let Some(kernel) = Process::kernel() else {
        return 0;
    };
    match addr {
        Some(addr) if addr > ZERO_SIZE_PTR => {
            if !release(&kernel, addr) {
                kernel.count(Counter::FreeUnknown);
            }
        }
        Some(_) => {}
        None => kernel.count(Counter::ReadFailed),
    }
    0
}

/// Pages are keyed by their frame number (never a valid kernel address).
#[inline(always)]
fn page_bytes(order: Option<u32>) -> Option<u64> {
    // SAFETY: read-only global, set before load.
    let page_size = unsafe { core::ptr::read_volatile(&KERNEL_FIELDS.page_size) } as u64;
    order.map(|order| page_size << (order & 31))
}

#[tracepoint]
pub fn kmalloc(ctx: TracePointContext) -> u32 {
    let addr = field(&ctx, &KERNEL_FIELDS.kmalloc_ptr);
    let size = field(&ctx, &KERNEL_FIELDS.kmalloc_bytes);
    kernel_alloc(&ctx, addr, size)
}

#[tracepoint]
pub fn kfree(ctx: TracePointContext) -> u32 {
    kernel_free(field(&ctx, &KERNEL_FIELDS.kfree_ptr))
}

#[tracepoint]
pub fn kmem_cache_alloc(ctx: TracePointContext) -> u32 {
    let addr = field(&ctx, &KERNEL_FIELDS.cache_alloc_ptr);
    let size = field(&ctx, &KERNEL_FIELDS.cache_alloc_bytes);
    kernel_alloc(&ctx, addr, size)
}

#[tracepoint]
pub fn kmem_cache_free(ctx: TracePointContext) -> u32 {
    kernel_free(field(&ctx, &KERNEL_FIELDS.cache_free_ptr))
}

#[tracepoint]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    // A failed allocation reports pfn -1.
    let pfn: Option<u64> = field(&ctx, &KERNEL_FIELDS.page_alloc_pfn);
    if pfn == Some(u64::MAX) {
        return 0;
    }
    let size = page_bytes(field(&ctx, &KERNEL_FIELDS.page_alloc_order));
    kernel_alloc(&ctx, pfn.map(page_key), size)
}

#[tracepoint]
pub fn mm_page_free(ctx: TracePointContext) -> u32 {
    let pfn: Option<u64> = field(&ctx, &KERNEL_FIELDS.page_free_pfn);
    kernel_free(pfn.map(page_key))
}

/// A page's key in ALLOCS: its frame number, moved past the values kernel_alloc ignores. Frame
/// numbers stay far below kernel addresses, so the two never collide.
#[inline(always)]
fn page_key(pfn: u64) -> u64 {
    pfn + PAGE_KEY_BASE
}

#[tracepoint]
pub fn percpu_alloc_percpu(ctx: TracePointContext) -> u32 {
    let addr = field(&ctx, &KERNEL_FIELDS.percpu_alloc_ptr);
    let size = field(&ctx, &KERNEL_FIELDS.percpu_alloc_bytes);
    kernel_alloc(&ctx, addr, size)
}

#[tracepoint]
pub fn percpu_free_percpu(ctx: TracePointContext) -> u32 {
    kernel_free(field(&ctx, &KERNEL_FIELDS.percpu_free_ptr))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
