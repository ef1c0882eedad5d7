//! The eBPF side, seen from userspace: loads the programs once, attaches them, and reads or
//! forgets what they recorded for a process ([`Tracer`], uprobes on the C allocator) or for the
//! kernel ([`KernelTracer`], tracepoints on the kernel's allocators).
//!
//! Two ways to attach: to one process at a time (pid-scoped uprobes, so no other process on the
//! machine pays for them; right for one traced program), or once to every process for as long
//! as the tracer lives ([`Tracer::attach_everywhere`]; right for a test run, where removing
//! 22 probes after every test would cost 2.2 s each — see [`Tracer::detach`]). Either way
//! the eBPF programs return at once for a process that is not registered.
//!
//! What the programs record besides the outstanding allocations is fixed at load time
//! ([`Recording`]): one allocation in N (`--sample-rate`), per-stack totals (`--combined-only`,
//! read instead of every allocation), a ring buffer of every allocation and free (`--trace`).
//!
//! Each traced process records into maps of its own, in a slot of the eBPF object's arrays of
//! maps, so that reading and forgetting it never walks another process's entries (the shared
//! maps, sized for the largest test, take only what a process's own cannot hold). Slots keep
//! their maps for the tracer's life and are emptied for the next process by a thread of their
//! own: placing a map in an array of maps waits for a grace period, emptying one is a batch
//! walk of its buckets.
//!
//! Invariants: a process is traced exactly while its [`ProcessStats`] entry exists; the entry is
//! created before its probes are attached (or, attached everywhere, before it execs), names
//! its slot, and [`Tracer::forget`] removes it and every entry of the process in the shared
//! maps, and hands its slot to be emptied before it is given out again. Each tracer loads maps
//! of its own (nothing is pinned), so two tracers of one process never see or remove each
//! other's entries.

use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
    util::nr_cpus,
};
use memleak_common::{
    AllocInfo, AllocKey, Counter, KERNEL_TGID, KernelFields, NO_SLOT, OWN_ALLOCS_FLAGS,
    OWN_STACKS_FLAGS, ProcessLive, ProcessStats, SLOTS, STACK_DEPTH, StackFrames, StackKey,
    StackTotal, TraceConfig, names,
};

use crate::{
    allocator::{AllocatorProbes, ExecutableAllocators, ProbeKind},
    error::{Error, Result},
};

/// The eBPF object build.rs put in OUT_DIR (built from source, or the shipped one).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memleak-ebpf"));

/// Map sizes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Outstanding allocations in the shared map, which takes what a process's own map has no
    /// room for, across all traced processes. The kernel reserves 16 bytes of hash buckets per
    /// entry when the map is created (about 30 ms per million to clear), the entries themselves
    /// only as they are used.
    pub max_allocs: u32,
    /// Distinct stacks in the shared map, across all traced processes.
    pub max_stacks: u32,
}

/// The size of each traced process's own maps: reading one walks every bucket (16 bytes an
/// entry), so they stay small; a process that needs more spills into the shared maps
/// ([`Limits`]), which are then read for it too.
const OWN_ALLOCS: u32 = 1 << 16;
const OWN_STACKS: u32 = 1 << 12;
const OWN_ALLOCATOR_MAPS: u32 = 1 << 12;
/// Rust gives every thread an alternate signal stack (its stack-overflow handler).
const OWN_ALTSTACKS: u32 = 1 << 13;

impl Limits {
    /// For a test run, which loads the maps once and shares them among the tests it runs at
    /// once: room for real tests with millions of live blocks (threadpool's
    /// `test_massive_task_creation` holds 4.2 million boxed tasks, rayon's
    /// `par_bridge_recursion` 1.1 million) beside the others.
    pub fn test_run() -> Self {
        Self {
            max_allocs: 1 << 23,
            ..Self::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_allocs: 1 << 20,
            max_stacks: 1 << 16,
        }
    }
}

/// What the programs record, fixed when the object is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// `--sample-rate N`: record one allocation in N per thread (0 and 1: all).
    pub sample_rate: u32,
    /// `--combined-only`: keep outstanding totals per stack in the kernel, and read only
    /// those.
    pub combined: bool,
    /// `--trace`: send every recorded allocation and free to the ring buffer
    /// ([`Tracer::take_events`]).
    pub trace: bool,
    /// Record no allocation times (`test`: nothing there reads ages), one clock read less
    /// per allocation.
    pub no_ages: bool,
    /// `--no-peak`: follow no process's live heap (no [`Heap`] figures).
    pub no_heap: bool,
}

impl Recording {
    /// `N` when one allocation in N is recorded.
    pub fn sampled(&self) -> Option<u32> {
        (self.sample_rate > 1).then_some(self.sample_rate)
    }

    fn config(&self) -> TraceConfig {
        let mut flags = 0;
        if self.trace {
            flags |= TraceConfig::TRACE;
        }
        if self.combined {
            flags |= TraceConfig::COMBINED;
        }
        if !self.no_ages {
            flags |= TraceConfig::AGES;
        }
        if !self.no_heap {
            flags |= TraceConfig::HEAP;
        }
        TraceConfig {
            sample_rate: self.sample_rate,
            flags,
        }
    }
}

/// The counters of one process (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Counters that lost data, with their values, non-zero only.
    pub fn drops(&self) -> Vec<(Counter, u64)> {
        Counter::DROPS
            .iter()
            .map(|&counter| (counter, self.get(counter)))
            .filter(|&(_, value)| value != 0)
            .collect()
    }

    fn add(&mut self, stats: &ProcessStats) {
        for counter in Counter::ALL {
            self.0[counter as usize] += stats.get(counter);
        }
    }
}

/// An allocation still outstanding when the process was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    pub addr: u64,
    pub size: u64,
    pub timestamp_ns: u64,
    /// Key into [`ProcessTrace::stacks`]; 0 when the stack was not captured.
    pub stack_id: u64,
}

/// Everything the probes recorded for one process.
#[derive(Clone, Debug, Default)]
pub struct ProcessTrace {
    pub outstanding: Vec<Outstanding>,
    /// Stack id → return addresses, innermost first.
    pub stacks: HashMap<u64, Vec<u64>>,
    pub counters: Counters,
    /// Thread id → the alternate signal stack it registered (`ss_sp`).
    pub altstacks: std::collections::BTreeMap<u32, u64>,
    /// The mappings the allocator made for itself inside its own calls: (start, length).
    pub allocator_maps: Vec<(u64, u64)>,
    /// `--combined-only`: outstanding (bytes, allocations) by stack id, read instead of
    /// `outstanding` (which is then empty).
    pub combined: Option<std::collections::BTreeMap<u64, StackTotal>>,
    /// `--sample-rate N`: one allocation in N was recorded.
    pub sampled: Option<u32>,
    /// Its live heap's peak and what it allocated in all: `None` for the kernel's
    /// allocators and a sampled trace.
    pub heap: Option<Heap>,
}

/// What a process's allocations added up to over its life (see [`ProcessLive`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heap {
    /// The most bytes it had outstanding at once.
    pub peak_bytes: u64,
    /// The stack of the allocation that set the peak (0: unknown, or the blocks a forked
    /// child started with); its frames are in [`ProcessTrace::stacks`].
    pub peak_stack: u64,
    /// Blocks it was handed (each `malloc`, `calloc`, `realloc`, `mmap`, ...), and their bytes.
    pub allocations: u64,
    pub allocated_bytes: u64,
}

/// Probes attached to one process.
#[derive(Debug)]
pub struct Attachment {
    pid: u32,
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl Attachment {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// How the probes get into a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Multi-uprobe links (`BPF_TRACE_UPROBE_MULTI`, with the process-wide pid filter of Linux
    /// 6.10): one link for the entry points of an object and one for their returns, filtered
    /// to one process. Removing one unregisters all its probes and then waits for one grace
    /// period (~70 ms); processes that are not traced get no breakpoint at all.
    Multi,
    /// One perf-event uprobe per entry point and return, on kernels without multi links. Each
    /// removal waits for its own grace periods (~100 ms, serialized: 2.3 s for glibc's 22).
    PerfEvent,
}

/// Overrides the link mode: `auto` (the default), `multi` or `perf-event` (for kernels whose
/// multi links misbehave, and for testing the fallback).
pub const LINK_MODE_VARIABLE: &str = "CARGO_MEMLEAK_LINK_MODE";

impl LinkMode {
    /// Multi links when the kernel has them with the process-wide pid filter, unless
    /// [`LINK_MODE_VARIABLE`] says otherwise.
    pub fn chosen() -> Result<Self> {
        let detect = || {
            // The probe loads a program: without the privileges to (checked right after, with
            // the mode in hand) the kernel's version decides, 6.10 being the first whose multi
            // links filter by process.
            let multi = aya::sys::is_uprobe_multi_supported(
                aya::sys::UProbeMultiFeature::ProcessScopedPidFilter,
            )
            .unwrap_or_else(|_| kernel_release().is_some_and(|release| release >= (6, 10)));
            if multi {
                LinkMode::Multi
            } else {
                LinkMode::PerfEvent
            }
        };
        match std::env::var(LINK_MODE_VARIABLE).as_deref() {
            Err(_) | Ok("" | "auto") => Ok(detect()),
            Ok("multi") => Ok(LinkMode::Multi),
            Ok("perf-event") => Ok(LinkMode::PerfEvent),
            Ok(other) => Err(Error::Selection(format!(
                "{LINK_MODE_VARIABLE}={other}: expected auto, multi or perf-event"
            ))),
        }
    }
}

/// The running kernel's (major, minor) version.
fn kernel_release() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut numbers = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse().ok());
    Some((numbers.next()??, numbers.next()??))
}

impl LinkMode {
    /// The entry and return programs of this mode.
    fn programs(self) -> [(ProbeKind, &'static str); 2] {
        match self {
            LinkMode::Multi => [
                (ProbeKind::Entry, "alloc_enter_multi"),
                (ProbeKind::Return, "alloc_return_multi"),
            ],
            LinkMode::PerfEvent => [
                (ProbeKind::Entry, "alloc_enter"),
                (ProbeKind::Return, "alloc_return"),
            ],
        }
    }
}

pub struct Tracer {
    ebpf: Ebpf,
    recording: Recording,
    probes: AllocatorProbes,
    mode: LinkMode,
    /// What each executable traced so far allocates through, by path.
    executables: HashMap<std::path::PathBuf, ExecutableAllocators>,
    /// `--symbols-prefix`: allocator functions under this prefix are looked for in each
    /// executable too.
    symbols_prefix: Option<String>,
    /// Links attached to every process, when [`Tracer::attach_everywhere`] was called.
    everywhere: Option<Attachment>,
    /// Threads dropping detached links (see [`Tracer::detach`]).
    retiring: Vec<std::thread::JoinHandle<()>>,
    /// The own maps of each traced process.
    own: HashMap<u32, OwnMaps>,
    /// Own maps ready for the next process, emptied by the recycler.
    ready: std::sync::Arc<std::sync::Mutex<Vec<OwnMaps>>>,
    /// Empties a forgotten process's own maps off the critical path and puts them back in
    /// `ready`.
    recycler: Option<(
        std::sync::mpsc::Sender<OwnMaps>,
        std::thread::JoinHandle<()>,
    )>,
    /// Slots given own maps so far (each keeps them for the tracer's life).
    slots: u32,
}

/// A slot of the OWN_* arrays and the maps placed there. A slot keeps its maps for the
/// tracer's life: placing a map in an array of maps makes the kernel wait for a grace period
/// (10-20 ms here), emptying one costs a batch walk of its buckets. So a forgotten process's
/// maps are emptied and given to the next process, never replaced.
struct OwnMaps {
    slot: u32,
    allocs: Own<u64, AllocInfo>,
    stacks: Own<u64, StackFrames>,
    allocator_maps: Own<u64, u64>,
    altstacks: Own<u32, u64>,
}

impl OwnMaps {
    fn create(slot: u32, pid: u32) -> Result<Self> {
        Ok(Self {
            slot,
            allocs: Own::create(OWN_ALLOCS, OWN_ALLOCS_FLAGS, pid)?,
            stacks: Own::create(OWN_STACKS, OWN_STACKS_FLAGS, pid)?,
            allocator_maps: Own::create(OWN_ALLOCATOR_MAPS, OWN_ALLOCS_FLAGS, pid)?,
            altstacks: Own::create(OWN_ALTSTACKS, OWN_ALLOCS_FLAGS, pid)?,
        })
    }

    /// Puts each map in its array at the slot.
    fn place(&self, ebpf: &mut Ebpf, tgid: u32) -> Result<()> {
        place(ebpf, names::OWN_ALLOCS, self.slot, &self.allocs.map, tgid)?;
        place(ebpf, names::OWN_STACKS, self.slot, &self.stacks.map, tgid)?;
        place(
            ebpf,
            names::OWN_ALLOCATOR_MAPS,
            self.slot,
            &self.allocator_maps.map,
            tgid,
        )?;
        place(
            ebpf,
            names::OWN_ALTSTACKS,
            self.slot,
            &self.altstacks.map,
            tgid,
        )
    }

    /// Removes every entry (its process is gone: nothing adds any while this runs).
    fn empty(&mut self) {
        let _ = self.allocs.batch(true);
        let _ = self.stacks.batch(true);
        let _ = self.allocator_maps.batch(true);
        let _ = self.altstacks.batch(true);
    }
}

/// One of a process's own maps: typed for single lookups, and its descriptor for batch ones.
struct Own<K, V> {
    map: BpfHashMap<MapData, K, V>,
    fd: std::os::fd::OwnedFd,
}

impl<K: aya::Pod, V: aya::Pod> Own<K, V> {
    fn create(max_entries: u32, flags: u32, pid: u32) -> Result<Self> {
        let error = |err| map_error(pid, err);
        let definition = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            std::mem::size_of::<K>() as u32,
            std::mem::size_of::<V>() as u32,
            max_entries,
            flags,
        );
        let data = MapData::create(definition, "memleak_own", None).map_err(error)?;
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|err| map_error(pid, err))?;
        let map = BpfHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(error)?;
        Ok(Self { map, fd })
    }

    /// Every entry, read (or, with `delete`, taken out) in batches of a few thousand per
    /// system call rather than two calls an entry.
    fn batch(&self, delete: bool) -> std::io::Result<Vec<(K, V)>> {
        batch(std::os::fd::AsRawFd::as_raw_fd(&self.fd), delete)
    }
}

/// `BPF_MAP_LOOKUP_BATCH` (or `BPF_MAP_LOOKUP_AND_DELETE_BATCH`) over a hash map, to its end.
fn batch<K: aya::Pod, V: aya::Pod>(fd: i32, delete: bool) -> std::io::Result<Vec<(K, V)>> {
    /// `union bpf_attr`'s batch part.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const LOOKUP_BATCH: i32 = 24;
    const LOOKUP_AND_DELETE_BATCH: i32 = 25;
    // About 64 KiB of values per call (a stack is a kilobyte); more when a bucket holds more
    // entries than that (ENOSPC).
    let mut chunk = (65536 / std::mem::size_of::<V>()).clamp(64, 4096);
    // SAFETY: Pod types are plain integers: any bit pattern, zeros included, is one of them.
    let zeroed = |n: usize| -> (Vec<K>, Vec<V>) {
        unsafe { (vec![std::mem::zeroed(); n], vec![std::mem::zeroed(); n]) }
    };
    let (mut keys, mut values) = zeroed(chunk);
    let mut entries = Vec::new();
    // A hash map's batch token is a bucket index.
    let (mut next, mut token) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const next) as u64 },
            out_batch: (&raw mut token) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let command = if delete {
            LOOKUP_AND_DELETE_BATCH
        } else {
            LOOKUP_BATCH
        };
        // SAFETY: the kernel reads `attr` and writes at most `count` keys and values into
        // buffers of that many, and the token into `token`; all outlive the call.
        let result = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                command,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let filled = (attr.count as usize).min(chunk);
        entries.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        if result < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(nix::libc::ENOENT) => return Ok(entries),
                Some(nix::libc::ENOSPC) if filled == 0 && chunk < 1 << 20 => {
                    chunk *= 4;
                    (keys, values) = zeroed(chunk);
                    continue;
                }
                _ => return Err(err),
            }
        }
        next = token;
        first = false;
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(attachment) = self.everywhere.take() {
            self.detach(attachment);
        }
        if let Some((sender, thread)) = self.recycler.take() {
            drop(sender);
            let _ = thread.join();
        }
        for thread in self.retiring.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What to say when loading or attaching fails for a reason the user can fix.
const KERNEL_HINT: &str = "the kernel needs BPF, uprobes (CONFIG_UPROBE_EVENTS) and BTF, and \
                           cargo-memleak needs root or CAP_BPF + CAP_PERFMON";

impl Tracer {
    /// Loads the eBPF object and the programs of the best link mode the kernel has (nothing
    /// is attached yet).
    pub fn load(probes: AllocatorProbes, limits: Limits, recording: Recording) -> Result<Self> {
        let mode = LinkMode::chosen()?;
        let mut ebpf = load_object(limits, &KernelFields::ZERO, recording)?;
        for (_, name) in mode.programs() {
            let program = uprobe(&mut ebpf, name)?;
            program.load().map_err(|err| Error::BpfLoad {
                reason: format!("{name}: {}", error_chain(&err)),
                hint: KERNEL_HINT,
            })?;
        }
        Ok(Self {
            ebpf,
            recording,
            probes,
            mode,
            executables: HashMap::new(),
            symbols_prefix: None,
            everywhere: None,
            retiring: Vec::new(),
            own: HashMap::new(),
            ready: Default::default(),
            recycler: None,
            slots: 0,
        })
    }

    pub fn probes(&self) -> &AllocatorProbes {
        &self.probes
    }

    pub fn recording(&self) -> Recording {
        self.recording
    }

    /// `--trace`'s ring buffer, once (its reader owns it from then on).
    pub fn take_events(&mut self) -> Result<Option<RingBuf<MapData>>> {
        take_events(&mut self.ebpf, self.recording)
    }

    pub fn link_mode(&self) -> LinkMode {
        self.mode
    }

    /// Readies the tracer for many processes, one after another and several at once (a test
    /// run). With multi links each process gets its own, and nothing needs doing. Without
    /// them, removing a process's perf-event probes would cost 2.3 s per process: they are
    /// attached to every process once instead, and the returned note says what that costs.
    pub fn prepare_for_many(&mut self, at_once: usize) -> Result<Option<&'static str>> {
        // Own maps for the tests that run at once, and two followed children, made before the
        // first test (each slot costs a grace period once).
        for _ in 0..at_once + 2 {
            let own = self.new_slot(0)?;
            self.lock_ready().push(own);
        }
        match self.mode {
            LinkMode::Multi => Ok(None),
            LinkMode::PerfEvent => {
                self.attach_everywhere()?;
                Ok(Some(
                    "this kernel has no multi-uprobe links (Linux 6.10 or newer): the probes are \
                     attached to every process for the whole run, so every other process's \
                     allocations trap too (~3 µs per call) and removing them at the end takes \
                     ~2.3 s",
                ))
            }
        }
    }

    /// Attaches every probe to every process, until the tracer is dropped; from then on
    /// [`Tracer::attach`] only registers a process.
    pub fn attach_everywhere(&mut self) -> Result<()> {
        if self.everywhere.is_none() {
            self.everywhere = Some(self.attach_links(0, UProbeScope::AllProcesses)?);
        }
        Ok(())
    }

    /// Starts tracing `pid` (and its threads, and whatever it execs): registers it, and
    /// attaches the probes to it unless they are attached everywhere already.
    pub fn attach(&mut self, pid: u32) -> Result<Attachment> {
        self.register(pid)?;
        if self.everywhere.is_some() {
            return Ok(Attachment {
                pid,
                links: Vec::new(),
            });
        }
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or_else(|| Error::MapRead {
                pid,
                reason: "pid 0 cannot be traced".into(),
            })?);
        self.attach_links(pid, scope).inspect_err(|_| {
            let _ = self.forget(pid);
        })
    }

    /// Starts recording for `tgid`: empty maps of its own, and zeroed counters that name
    /// their slot.
    fn register(&mut self, tgid: u32) -> Result<()> {
        let recycled = self.lock_ready().pop();
        let own = match recycled {
            Some(own) => own,
            None => self.new_slot(tgid)?,
        };
        match register(&mut self.ebpf, tgid, own.slot) {
            Ok(()) => {
                self.own.insert(tgid, own);
                Ok(())
            }
            Err(err) => {
                self.lock_ready().push(own);
                Err(err)
            }
        }
    }

    /// Own maps in a slot not used yet.
    fn new_slot(&mut self, tgid: u32) -> Result<OwnMaps> {
        if self.slots == SLOTS {
            return Err(Error::MapRead {
                pid: tgid,
                reason: format!("{SLOTS} processes are traced at once already"),
            });
        }
        let own = OwnMaps::create(self.slots, tgid)?;
        own.place(&mut self.ebpf, tgid)?;
        self.slots += 1;
        Ok(own)
    }

    fn lock_ready(&self) -> std::sync::MutexGuard<'_, Vec<OwnMaps>> {
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `own` to the recycler thread (started on first use), which empties it and puts
    /// it back among the ready ones.
    fn recycle(&mut self, own: OwnMaps) {
        let (sender, _) = self.recycler.get_or_insert_with(|| {
            let (sender, receiver) = std::sync::mpsc::channel::<OwnMaps>();
            let ready = std::sync::Arc::clone(&self.ready);
            let thread = std::thread::spawn(move || {
                for mut own in receiver {
                    own.empty();
                    ready
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(own);
                }
            });
            (sender, thread)
        });
        if let Err(std::sync::mpsc::SendError(mut own)) = sender.send(own) {
            own.empty();
            self.lock_ready().push(own);
        }
    }

    /// What `executable` allocates through (cached by path: a test run traces the same
    /// binaries over and over).
    /// Looks for allocator functions named `prefix` + libc's names in each executable.
    pub fn set_symbols_prefix(&mut self, prefix: Option<String>) {
        self.symbols_prefix = prefix;
        self.executables.clear();
    }

    pub fn executable_allocators(
        &mut self,
        executable: &std::path::Path,
    ) -> Result<ExecutableAllocators> {
        if let Some(known) = self.executables.get(executable) {
            return Ok(known.clone());
        }
        let found =
            crate::allocator::executable_allocators(executable, self.symbols_prefix.as_deref())?;
        self.executables
            .insert(executable.to_owned(), found.clone());
        Ok(found)
    }

    /// Adds the probes of another object (the executable's allocator shim) to a process's
    /// attachment: two more links.
    pub fn attach_object(
        &mut self,
        attachment: &mut Attachment,
        probes: &AllocatorProbes,
    ) -> Result<()> {
        let pid = attachment.pid;
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or_else(|| Error::MapRead {
                pid,
                reason: "pid 0 cannot be traced".into(),
            })?);
        let links = self.link(probes, scope)?;
        attachment.links.extend(links);
        Ok(())
    }

    /// One link per program: all of the allocator object's entry points, or all their returns.
    fn attach_links(&mut self, pid: u32, scope: UProbeScope) -> Result<Attachment> {
        let probes = self.probes.clone();
        Ok(Attachment {
            pid,
            links: self.link(&probes, scope)?,
        })
    }

    /// Links `probes`' entry points to the entry program and their returns to the return
    /// program, each point with its cookie; on failure nothing stays attached.
    fn link(
        &mut self,
        probes: &AllocatorProbes,
        scope: UProbeScope,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>> {
        let mut attachment = Attachment {
            pid: 0,
            links: Vec::new(),
        };
        let object = probes.object.clone();
        for (kind, name) in self.mode.programs() {
            let points: Vec<UProbeAttachPoint<'static>> = probes
                .points_of(kind)
                .map(|point| UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(point.offset),
                    cookie: Some(point.cookie.0),
                })
                .collect();
            let symbols = || {
                probes
                    .points_of(kind)
                    .flat_map(|point| point.symbols.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let symbols = symbols();
            let program = uprobe(&mut self.ebpf, name)?;
            match program.attach(points, &object, scope) {
                Ok(link) => attachment.links.push((name, link)),
                Err(err) => {
                    self.detach(attachment);
                    return Err(Error::Attach {
                        symbol: symbols,
                        object,
                        reason: error_chain(&err),
                        hint: KERNEL_HINT,
                    });
                }
            }
        }
        Ok(attachment.links)
    }

    /// Detaches the probes of one process, in the background: the report, and the next
    /// process, do not wait for the kernel's grace periods (measured: releases from several
    /// threads overlap them). Dropping the tracer waits for the ones still under way.
    pub fn detach(&mut self, attachment: Attachment) {
        self.retiring.retain(|thread| !thread.is_finished());
        if attachment.links.is_empty() {
            return;
        }
        let mut links = Vec::with_capacity(attachment.links.len());
        for (name, link) in attachment.links {
            if let Ok(program) = uprobe(&mut self.ebpf, name)
                && let Ok(link) = program.take_link(link)
            {
                links.push(link);
            }
        }
        self.retiring.push(std::thread::spawn(move || drop(links)));
    }

    /// Reads what the probes recorded for `tgid`.
    pub fn read(&self, tgid: u32) -> Result<ProcessTrace> {
        read_trace(&self.ebpf, tgid, self.recording, self.own.get(&tgid))
    }

    /// A forked child starts as a copy of its parent: every block the parent had outstanding
    /// at the fork is the child's too, with its stack (the child may free them, or lose them).
    /// Both are stopped (the parent at its fork event, the child before its first instruction).
    pub fn inherit(&mut self, parent: u32, child: u32) -> Result<()> {
        let from = read_trace(
            &self.ebpf,
            parent,
            Recording::default(),
            self.own.get(&parent),
        )?;
        let Some(own) = self.own.get_mut(&child) else {
            return Err(Error::MapRead {
                pid: child,
                reason: "the child is not registered".into(),
            });
        };
        let slot = own.slot;
        // What does not fit in the child's own maps goes to the shared ones, and its counters
        // say so (they are read from then on).
        let mut spilled = [0u64; Counter::COUNT];
        let mut shared_stacks = Vec::new();
        for (&stack_id, frames) in &from.stacks {
            let mut full: StackFrames = [0; STACK_DEPTH];
            full[..frames.len()].copy_from_slice(frames);
            if own.stacks.map.insert(&stack_id, &full, 0).is_err() {
                spilled[Counter::SharedStacks as usize] += 1;
                shared_stacks.push((stack_id, full));
            }
        }
        let mut shared_allocs = Vec::new();
        for block in &from.outstanding {
            let info = AllocInfo {
                size: block.size,
                timestamp_ns: block.timestamp_ns,
                stack_id: block.stack_id,
            };
            if own.allocs.map.insert(&block.addr, &info, 0).is_err() {
                spilled[Counter::SharedAllocs as usize] += 1;
                shared_allocs.push((block.addr, info));
            }
        }
        let ebpf = &mut self.ebpf;
        if !shared_stacks.is_empty() {
            let mut stacks: BpfHashMap<&mut MapData, StackKey, StackFrames> =
                map_mut(ebpf, names::STACKS, child)?;
            for (stack_id, frames) in shared_stacks {
                let key = StackKey {
                    stack_id,
                    tgid: child,
                    _pad: 0,
                };
                stacks
                    .insert(&key, &frames, 0)
                    .map_err(|err| map_error(child, err))?;
            }
        }
        if !shared_allocs.is_empty() {
            let mut allocs: BpfHashMap<&mut MapData, AllocKey, AllocInfo> =
                map_mut(ebpf, names::ALLOCS, child)?;
            for (addr, info) in shared_allocs {
                let key = AllocKey {
                    addr,
                    tgid: child,
                    _pad: 0,
                };
                allocs
                    .insert(&key, &info, 0)
                    .map_err(|err| map_error(child, err))?;
            }
        }
        if spilled.iter().any(|&n| n > 0) {
            let mut stats = stats_map(ebpf)?;
            let mut values: Vec<ProcessStats> = stats
                .get(&child, 0)
                .map_err(|err| map_error(child, err))?
                .iter()
                .copied()
                .collect();
            for (counter, n) in values[0].counters.iter_mut().zip(spilled) {
                *counter += n;
            }
            let values = PerCpuValues::try_from(values).map_err(|source| Error::Io {
                context: "per-CPU counters".into(),
                source,
            })?;
            stats
                .insert(&child, values, 0)
                .map_err(|err| map_error(child, err))?;
        }
        // Its live heap starts as the blocks it inherited (the fork's stack is none of them).
        let inherited = from.outstanding.iter().map(|block| block.size).sum();
        let live = ProcessLive {
            bytes: inherited,
            peak_bytes: inherited,
            peak_stack: 0,
        };
        set_live(ebpf, child, slot, live)?;
        if self.recording.combined {
            let mut totals: std::collections::BTreeMap<u64, StackTotal> = Default::default();
            for block in &from.outstanding {
                let total = totals.entry(block.stack_id).or_default();
                total.bytes += block.size;
                total.allocations += 1;
            }
            let mut combined: BpfHashMap<&mut MapData, StackKey, StackTotal> =
                map_mut(ebpf, names::COMBINED, child)?;
            for (stack_id, total) in totals {
                let key = StackKey {
                    stack_id,
                    tgid: child,
                    _pad: 0,
                };
                combined
                    .insert(&key, &total, 0)
                    .map_err(|err| map_error(child, err))?;
            }
        }
        Ok(())
    }

    /// After an exec: what the process recorded belongs to the program it was, so it is
    /// forgotten, and tracing starts over with zeroed counters and new maps of its own (its
    /// links stay).
    pub fn restart(&mut self, tgid: u32) -> Result<()> {
        self.forget(tgid)?;
        self.register(tgid)
    }

    /// Removes every map entry of `tgid`: its counters (which stops its tracing), its own maps
    /// (emptied in the background, for the next process), and its entries in the shared maps:
    /// the blocks and stacks it spilled there. (Its threads' pending calls are in their task
    /// storage, which goes with them.)
    /// The maps then hold only the processes traced at the moment, however many came before.
    pub fn forget(&mut self, tgid: u32) -> Result<()> {
        let ebpf = &mut self.ebpf;
        let mut stats = stats_map(ebpf)?;
        let mut counters = Counters::default();
        if let Ok(per_cpu) = stats.get(&tgid, 0) {
            for cpu in per_cpu.iter() {
                counters.add(cpu);
            }
        }
        let _ = stats.remove(&tgid);
        let own = self.own.remove(&tgid);
        let has_own = own.is_some();
        if let Some(own) = own {
            self.recycle(own);
        }
        let ebpf = &mut self.ebpf;
        if !has_own || counters.get(Counter::SharedAllocs) > 0 {
            remove_where::<AllocKey, AllocInfo>(map_mut(ebpf, names::ALLOCS, tgid)?, |key| {
                key.tgid == tgid
            });
        }
        if !has_own || counters.get(Counter::SharedStacks) > 0 {
            remove_where::<StackKey, StackFrames>(map_mut(ebpf, names::STACKS, tgid)?, |key| {
                key.tgid == tgid
            });
        }
        if self.recording.combined {
            remove_where::<StackKey, StackTotal>(map_mut(ebpf, names::COMBINED, tgid)?, |key| {
                key.tgid == tgid
            });
        }
        if self.recording.sampled().is_some() {
            remove_where::<u64, u64>(map_mut(ebpf, names::SAMPLES, tgid)?, |key| {
                (key >> 32) as u32 == tgid
            });
        }
        Ok(())
    }

    /// The process a thread held at a `ptrace` call asks for (the entry program's HANDOVERS:
    /// its own, or the one it attaches to), taken out; `None` when the thread was not held so.
    pub fn take_handover(&mut self, tid: u32) -> Option<u32> {
        let mut handovers: BpfHashMap<&mut MapData, u32, u32> =
            map_mut(&mut self.ebpf, names::HANDOVERS, tid).ok()?;
        let wanted = handovers.get(&tid, 0).ok()?;
        let _ = handovers.remove(&tid);
        Some(wanted)
    }
}

/// A kernel allocator tracepoint: the eBPF program, and the event's category and name in
/// tracefs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
}

/// Tracepoints on the kernel's allocators, recording under [`KERNEL_TGID`] for as long as this
/// lives (dropping it detaches them).
pub struct KernelTracer {
    ebpf: Ebpf,
    recording: Recording,
}

impl KernelTracer {
    /// Loads the object with the events' field offsets, turns kernel tracing on and attaches
    /// every event's program.
    pub fn attach(
        events: &[KernelEvent],
        fields: &KernelFields,
        limits: Limits,
        recording: Recording,
    ) -> Result<Self> {
        let mut ebpf = load_object(limits, fields, recording)?;
        // The kernel's allocations go to the shared maps, sized by `limits`.
        register(&mut ebpf, KERNEL_TGID, NO_SLOT)?;
        for event in events {
            let attach_error = |err: &dyn std::error::Error| Error::BpfLoad {
                reason: format!(
                    "tracepoint {}:{}: {}",
                    event.category,
                    event.name,
                    error_chain(err)
                ),
                hint: KERNEL_HINT,
            };
            let program: &mut TracePoint = ebpf
                .program_mut(event.program)
                .ok_or_else(|| Error::BpfLoad {
                    reason: format!("program {} missing from the eBPF object", event.program),
                    hint: "rebuild cargo-memleak",
                })?
                .try_into()
                .map_err(|err: aya::programs::ProgramError| attach_error(&err))?;
            program.load().map_err(|err| attach_error(&err))?;
            program
                .attach(event.category, event.name)
                .map_err(|err| attach_error(&err))?;
        }
        Ok(Self { ebpf, recording })
    }

    /// What the tracepoints recorded since they were attached.
    pub fn read(&self) -> Result<ProcessTrace> {
        read_trace(&self.ebpf, KERNEL_TGID, self.recording, None)
    }

    /// `--trace`'s ring buffer, once.
    pub fn take_events(&mut self) -> Result<Option<RingBuf<MapData>>> {
        take_events(&mut self.ebpf, self.recording)
    }
}

/// Loads the eBPF object: its maps, sized by `limits`, and the kernel programs' field offsets
/// (programs are loaded by whoever attaches them).
fn load_object(limits: Limits, fields: &KernelFields, recording: Recording) -> Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries(names::ALLOCS, limits.max_allocs)
        .map_max_entries(names::STACKS, limits.max_stacks)
        .map_max_entries(names::COMBINED, limits.max_stacks)
        .override_global(names::KERNEL_FIELDS, fields, true)
        .override_global(names::TRACE_CONFIG, &recording.config(), true)
        // THREADS, a task storage map: aya has no type for it, and only the programs use it.
        .allow_unsupported_maps()
        .load(EBPF_OBJECT)
        .map_err(|err| Error::BpfLoad {
            reason: error_chain(&err),
            hint: KERNEL_HINT,
        })
}

/// Starts recording for `tgid`: gives it zeroed counters that name its `slot` (or
/// [`NO_SLOT`]).
fn register(ebpf: &mut Ebpf, tgid: u32, slot: u32) -> Result<()> {
    if slot != NO_SLOT {
        set_live(ebpf, tgid, slot, ProcessLive::default())?;
    }
    stats_map(ebpf)?
        .insert(&tgid, zeroed_per_cpu(slot)?, 0)
        .map_err(|err| map_error(tgid, err))
}

/// Sets the live heap of `tgid`, in `slot`.
fn set_live(ebpf: &mut Ebpf, tgid: u32, slot: u32, live: ProcessLive) -> Result<()> {
    let mut lives: aya::maps::Array<&mut MapData, ProcessLive> = map_mut(ebpf, names::LIVE, tgid)?;
    lives
        .set(slot, &live, 0)
        .map_err(|err| map_error(tgid, err))
}

/// Puts `inner` at `slot` of the array of maps `name`.
fn place<V: aya::maps::InnerMap>(
    ebpf: &mut Ebpf,
    name: &str,
    slot: u32,
    inner: &V,
    tgid: u32,
) -> Result<()> {
    let mut outer: ArrayOfMaps<&mut MapData, V> = map_mut(ebpf, name, tgid)?;
    outer
        .set(slot, inner, 0)
        .map_err(|err| map_error(tgid, err))
}

/// The ring buffer of `--trace`, taken out of the object (`None` without `--trace`).
fn take_events(ebpf: &mut Ebpf, recording: Recording) -> Result<Option<RingBuf<MapData>>> {
    if !recording.trace {
        return Ok(None);
    }
    let map = ebpf.take_map(names::EVENTS).ok_or_else(|| Error::MapRead {
        pid: 0,
        reason: "map EVENTS missing from the eBPF object (or taken already)".into(),
    })?;
    RingBuf::try_from(map)
        .map(Some)
        .map_err(|err| map_error(0, err))
}

/// The stack totals of `tgid` (`--combined-only`), non-empty ones only.
fn read_combined(ebpf: &Ebpf, tgid: u32) -> Result<std::collections::BTreeMap<u64, StackTotal>> {
    let combined: BpfHashMap<&MapData, StackKey, StackTotal> = map(ebpf, names::COMBINED, tgid)?;
    let mut totals = std::collections::BTreeMap::new();
    for entry in combined.iter() {
        let (key, total) = entry.map_err(|err| map_error(tgid, err))?;
        if key.tgid == tgid && total.allocations != 0 {
            totals.insert(key.stack_id, total);
        }
    }
    Ok(totals)
}

/// Reads what the programs recorded for `tgid`: its own maps (`own`), and the shared ones
/// when it has none or spilled into them.
fn read_trace(
    ebpf: &Ebpf,
    tgid: u32,
    recording: Recording,
    own: Option<&OwnMaps>,
) -> Result<ProcessTrace> {
    let mut trace = ProcessTrace {
        sampled: recording.sampled(),
        ..ProcessTrace::default()
    };
    let stats: PerCpuHashMap<&MapData, u32, ProcessStats> = map(ebpf, names::STATS, tgid)?;
    let per_cpu = stats.get(&tgid, 0).map_err(|err| map_error(tgid, err))?;
    for cpu in per_cpu.iter() {
        trace.counters.add(cpu);
    }
    if let Some(own) = own
        && recording.sampled().is_none()
        && !recording.no_heap
    {
        let lives: aya::maps::Array<&MapData, ProcessLive> = map(ebpf, names::LIVE, tgid)?;
        let live = lives
            .get(&own.slot, 0)
            .map_err(|err| map_error(tgid, err))?;
        trace.heap = Some(Heap {
            peak_bytes: live.peak_bytes,
            peak_stack: live.peak_stack,
            allocations: trace.counters.get(Counter::Allocs),
            allocated_bytes: per_cpu.iter().map(|cpu| cpu.allocated_bytes).sum(),
        });
    }
    if recording.combined {
        trace.combined = Some(read_combined(ebpf, tgid)?);
    }
    let mut outstanding = Vec::new();
    let mut keep = |addr: u64, info: AllocInfo| {
        outstanding.push(Outstanding {
            addr,
            size: info.size,
            timestamp_ns: info.timestamp_ns,
            stack_id: info.stack_id,
        });
    };
    if !recording.combined {
        if let Some(own) = own {
            for (addr, info) in own
                .allocs
                .batch(false)
                .map_err(|err| map_error(tgid, err))?
            {
                keep(addr, info);
            }
        }
        if own.is_none() || trace.counters.get(Counter::SharedAllocs) > 0 {
            // Other traced processes insert and delete entries while we walk the shared map;
            // when the key we stand on is deleted, the kernel restarts the walk from the first
            // bucket. So entries can come twice (never zero times: ours do not change while
            // the process is stopped): each address is kept once.
            let allocs: BpfHashMap<&MapData, AllocKey, AllocInfo> = map(ebpf, names::ALLOCS, tgid)?;
            for entry in allocs.iter() {
                let (key, info) = entry.map_err(|err| map_error(tgid, err))?;
                if key.tgid == tgid {
                    keep(key.addr, info);
                }
            }
        }
    }
    // By address, each once (see the shared map's walk above).
    outstanding.sort_unstable_by_key(|alloc| alloc.addr);
    outstanding.dedup_by_key(|alloc| alloc.addr);
    trace.outstanding = outstanding;

    let shared: BpfHashMap<&MapData, StackKey, StackFrames> = map(ebpf, names::STACKS, tgid)?;
    let mut stack_ids: Vec<u64> = match &trace.combined {
        Some(totals) => totals.keys().copied().collect(),
        None => trace
            .outstanding
            .iter()
            .map(|alloc| alloc.stack_id)
            .collect(),
    };
    stack_ids.extend(trace.heap.map(|heap| heap.peak_stack));
    // The process's own stacks, read whole (a batch walk beats a lookup per stack).
    let own_stacks: HashMap<u64, StackFrames> = match own {
        Some(own) => own
            .stacks
            .batch(false)
            .map_err(|err| map_error(tgid, err))?
            .into_iter()
            .collect(),
        None => HashMap::new(),
    };
    let depth = |frames: &StackFrames| frames.iter().position(|&ip| ip == 0).unwrap_or(STACK_DEPTH);
    for stack_id in stack_ids {
        if stack_id == 0 || trace.stacks.contains_key(&stack_id) {
            continue;
        }
        // A process's stacks are removed only by `forget`, so a missing one is a real map
        // error.
        let frames = match own_stacks.get(&stack_id) {
            Some(frames) => frames[..depth(frames)].to_vec(),
            None => {
                let key = StackKey {
                    stack_id,
                    tgid,
                    _pad: 0,
                };
                let frames = shared.get(&key, 0).map_err(|err| map_error(tgid, err))?;
                frames[..depth(&frames)].to_vec()
            }
        };
        trace.stacks.insert(stack_id, frames);
    }

    if let Some(own) = own {
        trace.allocator_maps = own
            .allocator_maps
            .batch(false)
            .map_err(|err| map_error(tgid, err))?;
        trace.allocator_maps.sort_unstable();
        trace.altstacks = own
            .altstacks
            .batch(false)
            .map_err(|err| map_error(tgid, err))?
            .into_iter()
            .collect();
    }
    Ok(trace)
}

fn stats_map(ebpf: &mut Ebpf) -> Result<PerCpuHashMap<&mut MapData, u32, ProcessStats>> {
    map_mut(ebpf, names::STATS, 0)
}

fn map<'a, T>(ebpf: &'a Ebpf, name: &str, pid: u32) -> Result<T>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| Error::MapRead {
        pid,
        reason: format!("map {name} missing from the eBPF object"),
    })?;
    T::try_from(map).map_err(|err| map_error(pid, err))
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str, pid: u32) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| Error::MapRead {
        pid,
        reason: format!("map {name} missing from the eBPF object"),
    })?;
    T::try_from(map).map_err(|err| map_error(pid, err))
}

/// Removes the entries whose key matches. Keys are collected first: removing while walking
/// would restart the kernel's walk.
fn remove_where<K: aya::Pod, V: aya::Pod>(
    mut map: BpfHashMap<&mut MapData, K, V>,
    matches: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(|key| key.ok())
        .filter(|key| matches(key))
        .collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let program = ebpf.program_mut(name).ok_or_else(|| Error::BpfLoad {
        reason: format!("program {name} missing from the eBPF object"),
        hint: "rebuild cargo-memleak",
    })?;
    program
        .try_into()
        .map_err(|err: aya::programs::ProgramError| Error::BpfLoad {
            reason: format!("{name}: {}", error_chain(&err)),
            hint: "rebuild cargo-memleak",
        })
}

fn zeroed_per_cpu(slot: u32) -> Result<PerCpuValues<ProcessStats>> {
    let cpus = nr_cpus().map_err(|(context, source)| Error::Io {
        context: context.to_string(),
        source,
    })?;
    PerCpuValues::try_from(vec![ProcessStats::in_slot(slot); cpus.get() as usize]).map_err(
        |source| Error::Io {
            context: "sizing per-CPU counters".into(),
            source,
        },
    )
}

fn map_error(pid: u32, err: impl std::error::Error) -> Error {
    Error::MapRead {
        pid,
        reason: error_chain(&err),
    }
}

/// `err: cause: cause` on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
