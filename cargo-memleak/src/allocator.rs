//! Where to put the probes: finds the allocator's shared object (libc by default) and resolves
//! each allocator entry point to a file offset and an attach cookie that names it (one entry
//! program serves them all; see `memleak_common::Cookie`).
//!
//! Invariants: one probe per (address, kind), even when several symbols share an address
//! (glibc's `aligned_alloc` is `memalign`); `malloc` and `free` must exist, the other entry
//! points are probed when present.

use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, Register};
use memleak_common::{Cookie, EntryPoint};
use object::{
    Object as _, ObjectSegment as _, ObjectSymbol as _, ObjectSymbolTable as _, SegmentFlags,
    elf::PF_X,
};

use crate::error::{Error, Result};

/// Allocator entry points: symbol, which one it is, whether its return is probed too.
const ENTRY_POINTS: &[(&str, EntryPoint, bool)] = &[
    ("malloc", EntryPoint::Malloc, true),
    ("calloc", EntryPoint::Calloc, true),
    ("realloc", EntryPoint::Realloc, true),
    ("reallocarray", EntryPoint::Reallocarray, true),
    ("posix_memalign", EntryPoint::PosixMemalign, true),
    ("aligned_alloc", EntryPoint::Memalign, true),
    ("memalign", EntryPoint::Memalign, true),
    ("valloc", EntryPoint::Valloc, true),
    ("pvalloc", EntryPoint::Valloc, true),
    ("mmap", EntryPoint::Mmap, true),
    ("mremap", EntryPoint::Mremap, true),
    ("free", EntryPoint::Free, false),
    ("munmap", EntryPoint::Munmap, false),
    ("sigaltstack", EntryPoint::Sigaltstack, false),
    ("ptrace", EntryPoint::Ptrace, false),
];

const REQUIRED: &[&str] = &["malloc", "free"];

/// Which of the two programs a probe runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// At the function's entry: records the call.
    Entry,
    /// At its return: interprets the result.
    Return,
}

/// One uprobe to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub kind: ProbeKind,
    /// Symbols found at this address (for messages).
    pub symbols: Vec<&'static str>,
    /// File offset in the allocator object.
    pub offset: u64,
    /// The entry point and where the object's text lies ([`Cookie`]).
    pub cookie: Cookie,
}

/// Every probe for one allocator object.
#[derive(Clone, Debug)]
pub struct AllocatorProbes {
    pub object: PathBuf,
    pub points: Vec<ProbePoint>,
    /// Entry points the object does not export.
    pub missing: Vec<&'static str>,
}

impl AllocatorProbes {
    /// The points one program (one link) is attached to.
    pub fn points_of(&self, kind: ProbeKind) -> impl Iterator<Item = &ProbePoint> {
        self.points.iter().filter(move |point| point.kind == kind)
    }
}

/// Rust's allocator shim: the functions every Rust allocation goes through, in the final
/// binary, whatever the `#[global_allocator]` (demangled names; current compilers put them
/// under `__rustc::`). Every return is probed: `__rust_dealloc` is pending until its return,
/// so that a `GlobalAlloc` calling libc's `free` inside it is not counted twice.
const SHIM: &[(&str, EntryPoint)] = &[
    ("__rust_alloc", EntryPoint::RustAlloc),
    ("__rust_alloc_zeroed", EntryPoint::RustAllocZeroed),
    ("__rust_realloc", EntryPoint::RustRealloc),
    ("__rust_dealloc", EntryPoint::RustDealloc),
];

/// Allocators known by their own symbols, probed wherever an executable defines them: they
/// see the C code's calls as well as Rust's, and they are still there when LTO has inlined
/// the shim away. Each maps its functions to the libc entry point whose arguments they share.
const KNOWN: &[KnownFamily] = &[
    KnownFamily {
        name: "jemalloc",
        // tikv-jemallocator (and jemallocator) build jemalloc with this prefix.
        prefix: "_rjem_",
        crates: &["tikv_jemallocator::", "jemallocator::"],
        // Its internal functions are `_rjem_je_*`.
        code: &["_rjem_"],
        entry_points: &[
            ("malloc", EntryPoint::Malloc, true),
            // `mallocx(size, flags)`.
            ("mallocx", EntryPoint::Malloc, true),
            ("calloc", EntryPoint::Calloc, true),
            ("realloc", EntryPoint::Realloc, true),
            // `rallocx(ptr, size, flags)`.
            ("rallocx", EntryPoint::Realloc, true),
            ("posix_memalign", EntryPoint::PosixMemalign, true),
            ("aligned_alloc", EntryPoint::Memalign, true),
            ("memalign", EntryPoint::Memalign, true),
            ("valloc", EntryPoint::Valloc, true),
            ("free", EntryPoint::Free, false),
            // `sdallocx(ptr, size, flags)`, `dallocx(ptr, flags)`.
            ("sdallocx", EntryPoint::Free, false),
            ("dallocx", EntryPoint::Free, false),
        ],
    },
    KnownFamily {
        name: "mimalloc",
        prefix: "mi_",
        crates: &["mimalloc::"],
        code: &["mi_", "_mi_"],
        entry_points: &[
            ("malloc", EntryPoint::Malloc, true),
            ("zalloc", EntryPoint::Malloc, true),
            ("malloc_small", EntryPoint::Malloc, true),
            ("zalloc_small", EntryPoint::Malloc, true),
            // `mi_malloc_aligned(size, alignment)` and friends: the size comes first.
            ("malloc_aligned", EntryPoint::Malloc, true),
            ("zalloc_aligned", EntryPoint::Malloc, true),
            ("malloc_aligned_at", EntryPoint::Malloc, true),
            ("zalloc_aligned_at", EntryPoint::Malloc, true),
            ("new", EntryPoint::Malloc, true),
            ("new_aligned", EntryPoint::Malloc, true),
            ("calloc", EntryPoint::Calloc, true),
            ("calloc_aligned", EntryPoint::Calloc, true),
            ("new_n", EntryPoint::Calloc, true),
            ("realloc", EntryPoint::Realloc, true),
            ("rezalloc", EntryPoint::Realloc, true),
            ("reallocf", EntryPoint::Realloc, true),
            ("realloc_aligned", EntryPoint::Realloc, true),
            ("rezalloc_aligned", EntryPoint::Realloc, true),
            ("reallocarray", EntryPoint::Reallocarray, true),
            ("posix_memalign", EntryPoint::PosixMemalign, true),
            ("aligned_alloc", EntryPoint::Memalign, true),
            ("memalign", EntryPoint::Memalign, true),
            ("valloc", EntryPoint::Valloc, true),
            ("pvalloc", EntryPoint::Valloc, true),
            ("free", EntryPoint::Free, false),
            ("free_size", EntryPoint::Free, false),
            ("free_aligned", EntryPoint::Free, false),
            ("free_size_aligned", EntryPoint::Free, false),
        ],
    },
];

/// The allocating and freeing functions of libc (not its system calls), which
/// `--symbols-prefix` looks for under another prefix.
fn prefixed() -> Vec<(&'static str, EntryPoint, bool)> {
    ENTRY_POINTS
        .iter()
        .copied()
        .filter(|(_, entry_point, _)| {
            !matches!(
                entry_point,
                EntryPoint::Mmap
                    | EntryPoint::Mremap
                    | EntryPoint::Munmap
                    | EntryPoint::Sigaltstack
                    | EntryPoint::Ptrace
            )
        })
        .collect()
}

struct KnownFamily {
    name: &'static str,
    prefix: &'static str,
    /// Paths a shim calling into the family's Rust binding starts with.
    crates: &'static [&'static str],
    /// Prefixes of its functions, internal ones too: where its code lies.
    code: &'static [&'static str],
    /// Name after the prefix, the entry point it behaves as, whether its return is probed.
    entry_points: &'static [(&'static str, EntryPoint, bool)],
}

/// What an executable's allocations go through, as far as tracing it goes.
#[derive(Clone, Debug)]
pub struct ExecutableAllocators {
    pub rust: RustAllocator,
    /// It defines a `malloc` of its own (an allocator linked in, or a static binary): its C
    /// allocations never reach libc's. `Some` holds its own malloc family's probes, or why
    /// they could not be resolved.
    pub own_malloc: Option<std::result::Result<AllocatorProbes, String>>,
    /// Known allocators (and `--symbols-prefix` functions) it defines, to be probed.
    pub known: Vec<KnownAllocator>,
}

/// An allocator the executable defines, found by its own symbols.
#[derive(Clone, Debug)]
pub struct KnownAllocator {
    /// `jemalloc`, `mimalloc`, or `PREFIX*` for `--symbols-prefix`.
    pub name: String,
    pub probes: AllocatorProbes,
    /// The file offsets its code spans in the executable: a mapping made from there is the
    /// allocator's own, even outside its entry points (jemalloc maps its first chunks from a
    /// constructor).
    pub code: Option<std::ops::Range<u64>>,
}

/// What an executable's Rust allocation goes through.
#[derive(Clone, Debug)]
pub enum RustAllocator {
    /// Not a Rust program, or one on the system allocator (the shim ends in libc's `malloc`,
    /// which is probed anyway).
    System,
    /// A known allocator the executable defines ([`ExecutableAllocators::known`]), probed by
    /// its own symbols.
    Known,
    /// A `#[global_allocator]` of its own, and the shim that reaches it.
    Custom(AllocatorProbes),
    /// A `#[global_allocator]` of its own, but no shim to probe (inlined away).
    Unprobed,
}

/// Reads `executable` once for what [`ExecutableAllocators`] says; `prefix` is
/// `--symbols-prefix`.
pub fn executable_allocators(
    executable: &Path,
    prefix: Option<&str>,
) -> Result<ExecutableAllocators> {
    let read_error = |err: std::io::Error| Error::AllocatorObject {
        path: executable.to_owned(),
        reason: err.to_string(),
    };
    let file = std::fs::File::open(executable).map_err(read_error)?;
    // Mapped, not read: test binaries run to a hundred megabytes of debug information.
    // SAFETY: the mapping is read-only and private; a build rewriting the file while it is
    // read could only make parsing fail, which is handled.
    let data = unsafe { memmap2::Mmap::map(&file) }.map_err(read_error)?;
    let Ok(elf) = object::File::parse(&*data) else {
        return Ok(ExecutableAllocators {
            rust: RustAllocator::System,
            own_malloc: None,
            known: Vec::new(),
        });
    };
    let mut known = Vec::new();
    let families = KNOWN.iter().map(|family| {
        (
            family.name.to_owned(),
            family.prefix,
            family.code,
            family.entry_points,
        )
    });
    let prefixed = prefixed();
    let custom = prefix.map(|prefix| (format!("{prefix}*"), prefix, &[][..], &prefixed[..]));
    for (name, prefix, code, entry_points) in families.chain(custom) {
        let (points, _) = resolve_symbols(&elf, &data, prefix, entry_points);
        let frees = points
            .iter()
            .any(|point| point.cookie.entry() == Some(EntryPoint::Free));
        // An allocator without a free to probe would make every block look lost.
        if frees && points.iter().any(|point| point.kind == ProbeKind::Return) {
            let probes = AllocatorProbes {
                object: executable.to_owned(),
                points,
                missing: Vec::new(),
            };
            let own_prefix = [prefix];
            let code = code_range(&elf, if code.is_empty() { &own_prefix } else { code });
            known.push(KnownAllocator { name, probes, code });
        }
    }
    let own_malloc = symbol_address(&elf, "malloc").is_some().then(|| {
        resolve_elf(executable, &elf, &data, "").map_err(|err| match err {
            Error::AllocatorObject { reason, .. } => reason,
            other => other.to_string(),
        })
    });
    let known_prefixes: Vec<&str> = KNOWN
        .iter()
        .filter(|family| known.iter().any(|found| found.name == family.name))
        .flat_map(|family| std::iter::once(family.prefix).chain(family.crates.iter().copied()))
        .chain(prefix.filter(|_| known.iter().any(|found| found.name.ends_with('*'))))
        .collect();
    Ok(ExecutableAllocators {
        rust: rust_allocator(executable, &elf, &data, &known_prefixes)?,
        own_malloc,
        known,
    })
}

/// Finds the shim in `executable` and says whether it needs probing: only where the program
/// has a global allocator of its own, which [`shim_reaches_libc`] tells from the shim's code.
///
/// `known` are the symbol prefixes and crate paths of the known allocators the executable
/// defines: a shim that calls into one of them needs no probes of its own.
fn rust_allocator(
    executable: &Path,
    elf: &object::File<'_>,
    data: &[u8],
    known: &[&str],
) -> Result<RustAllocator> {
    let object_error = |reason: String| Error::AllocatorObject {
        path: executable.to_owned(),
        reason,
    };
    let mut found: Vec<(&str, EntryPoint, u64)> = Vec::new();
    let mut rust = false;
    for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
        if !symbol.is_definition() || symbol.address() == 0 {
            continue;
        }
        let Ok(raw) = symbol.name() else { continue };
        if !raw.contains("__rust_") {
            continue;
        }
        // Every Rust program has some of these (`__rust_start_panic`, backtrace markers).
        rust = true;
        let name = format!("{:#}", rustc_demangle::demangle(raw));
        let last = name.rsplit("::").next().unwrap_or(&name);
        if let Some(&(shim, entry)) = SHIM.iter().find(|(shim, _)| *shim == last)
            && !found.iter().any(|(seen, ..)| *seen == shim)
        {
            found.push((shim, entry, symbol.address()));
        }
    }
    let alloc = found
        .iter()
        .find(|(shim, ..)| *shim == "__rust_alloc")
        .map(|&(.., address)| address);
    match alloc.map(|address| shim_callee(elf, data, address)) {
        // Not a Rust program.
        None if !rust => return Ok(RustAllocator::System),
        // The whole shim inlined (LTO): a known allocator is all there is to probe.
        None if !known.is_empty() => return Ok(RustAllocator::Known),
        None => return Ok(RustAllocator::Unprobed),
        Some(ShimCallee::Libc) => return Ok(RustAllocator::System),
        Some(ShimCallee::Function(name))
            if known
                .iter()
                .any(|known| name.trim_start_matches('<').starts_with(known)) =>
        {
            return Ok(RustAllocator::Known);
        }
        Some(_) if found.len() < SHIM.len() => {
            return Ok(if known.is_empty() {
                RustAllocator::Unprobed
            } else {
                RustAllocator::Known
            });
        }
        Some(_) => {}
    }
    let text = executable_range(elf);
    let mut points = Vec::new();
    for (symbol, entry, address) in found {
        let offset = file_offset(elf, address)
            .ok_or_else(|| object_error(format!("{symbol} at {address:#x} is in no segment")))?;
        add_point(&mut points, ProbeKind::Entry, entry, symbol, offset, text);
        add_point(&mut points, ProbeKind::Return, entry, symbol, offset, text);
    }
    Ok(RustAllocator::Custom(AllocatorProbes {
        object: executable.to_owned(),
        points,
        missing: Vec::new(),
    }))
}

/// The file offsets spanned by the functions whose names start with one of `prefixes`.
fn code_range(elf: &object::File<'_>, prefixes: &[&str]) -> Option<std::ops::Range<u64>> {
    let (start, end) = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.address() != 0)
        .filter(|symbol| {
            symbol
                .name()
                .is_ok_and(|name| prefixes.iter().any(|prefix| name.starts_with(prefix)))
        })
        .map(|symbol| (symbol.address(), symbol.address() + symbol.size().max(1)))
        .reduce(|(start, end), (from, to)| (start.min(from), end.max(to)))?;
    Some(file_offset(elf, start)?..file_offset(elf, end - 1)? + 1)
}

/// Where the shim's `__rust_alloc` goes.
enum ShimCallee {
    /// The system allocator: `__rdl_alloc`, `<std::alloc::System as GlobalAlloc>`, or libc's
    /// `malloc` family through the GOT.
    Libc,
    /// Another function (demangled): a global allocator of the program's own.
    Function(String),
    /// Nothing recognizable (an allocator inlined into the shim).
    Unknown,
}

/// Where the shim's `__rust_alloc` (at `address`) ends: its first call or jump that decides
/// (layout checks are skipped).
fn shim_callee(elf: &object::File<'_>, data: &[u8], address: u64) -> ShimCallee {
    use iced_x86::{FlowControl, OpKind};
    let shim_size = elf
        .symbols()
        .find(|symbol| symbol.address() == address && symbol.size() > 0)
        .map_or(1, |symbol| symbol.size());
    const LIBC: &[&str] = &[
        "malloc",
        "calloc",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
    ];
    let Some(offset) = file_offset(elf, address) else {
        return ShimCallee::Unknown;
    };
    let Some(code) = usize::try_from(offset).ok().and_then(|at| data.get(at..)) else {
        return ShimCallee::Unknown;
    };
    // The function a target falls in: the defined symbol at or below it, demangled.
    let name_at = |target: u64| -> Option<String> {
        let symbol = elf
            .symbols()
            .filter(|symbol| {
                symbol.is_definition() && symbol.address() != 0 && symbol.address() <= target
            })
            .max_by_key(|symbol| symbol.address())?;
        Some(format!(
            "{:#}",
            rustc_demangle::demangle(symbol.name().ok()?)
        ))
    };
    let got_symbol = |slot: u64| -> Option<String> {
        let relocations = elf.dynamic_relocations()?;
        let (_, relocation) = relocations.into_iter().find(|(at, _)| *at == slot)?;
        match relocation.target() {
            // Dynamic relocations index the dynamic symbol table.
            object::RelocationTarget::Symbol(index) => {
                let symbol = elf.dynamic_symbol_table()?.symbol_by_index(index).ok()?;
                Some(symbol.name().ok()?.split('@').next()?.to_owned())
            }
            // A function of the executable's own, through a relative relocation.
            _ => name_at(u64::try_from(relocation.addend()).ok()?),
        }
    };
    let mut decoder = Decoder::with_ip(
        64,
        &code[..code.len().min(256)],
        address,
        DecoderOptions::NONE,
    );
    while decoder.can_decode() {
        let instruction = decoder.decode();
        match instruction.flow_control() {
            FlowControl::Call | FlowControl::UnconditionalBranch
                if instruction.op0_kind() == OpKind::NearBranch64 =>
            {
                let target = instruction.near_branch_target();
                // A jump within the shim itself (past an alignment check) decides nothing.
                if (address..address + shim_size).contains(&target) {
                    continue;
                }
                let Some(name) = name_at(target) else {
                    return ShimCallee::Unknown;
                };
                if name.contains("Layout") {
                    continue;
                }
                if name.ends_with("__rdl_alloc") || name.contains("std::alloc::System as") {
                    return ShimCallee::Libc;
                }
                return ShimCallee::Function(name);
            }
            FlowControl::IndirectCall | FlowControl::IndirectBranch
                if instruction.is_ip_rel_memory_operand() =>
            {
                return match got_symbol(instruction.ip_rel_memory_address()) {
                    Some(name) if LIBC.contains(&name.as_str()) => ShimCallee::Libc,
                    Some(name) => ShimCallee::Function(name),
                    None => ShimCallee::Unknown,
                };
            }
            FlowControl::Return | FlowControl::Interrupt => return ShimCallee::Unknown,
            _ => {}
        }
    }
    ShimCallee::Unknown
}

/// Finds the libc this process runs with: a dynamically linked program started from here uses
/// the same one, found the same way by the dynamic loader.
pub fn find_libc() -> Result<PathBuf> {
    find_libc_of(std::process::id())
}

/// Finds the libc mapped into process `pid`, as a path that names the same file from here
/// (through /proc/PID/root, in case the process lives in another mount namespace).
pub fn find_libc_of(pid: u32) -> Result<PathBuf> {
    let maps =
        crate::scan::mappings(pid).map_err(Error::io(format!("reading /proc/{pid}/maps")))?;
    let path = maps
        .into_iter()
        .find_map(|map| match map.kind {
            crate::scan::Kind::File(path) => {
                let name = path.file_name()?.to_str()?;
                let libc =
                    name == "libc.so.6" || (name.starts_with("libc-") && name.ends_with(".so"));
                libc.then_some(path)
            }
            _ => None,
        })
        .ok_or(Error::NoLibc)?;
    if pid == std::process::id() {
        return Ok(path);
    }
    let through_root =
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path));
    Ok(if through_root.exists() {
        through_root
    } else {
        path
    })
}

/// Resolves the probe points of `object`; with `prefix` (`--symbols-prefix`), of its
/// prefixed allocator functions instead of libc's names.
pub fn resolve(object: &Path, prefix: Option<&str>) -> Result<AllocatorProbes> {
    let object_error = |reason: String| Error::AllocatorObject {
        path: object.to_owned(),
        reason,
    };
    let data = std::fs::read(object).map_err(|err| object_error(err.to_string()))?;
    let elf = object::File::parse(&*data).map_err(|err| object_error(err.to_string()))?;
    resolve_elf(object, &elf, &data, prefix.unwrap_or(""))
}

/// [`resolve`] on a parsed object.
fn resolve_elf(
    object: &Path,
    elf: &object::File<'_>,
    data: &[u8],
    prefix: &str,
) -> Result<AllocatorProbes> {
    let prefixed = prefixed();
    let entry_points = if prefix.is_empty() {
        ENTRY_POINTS
    } else {
        &prefixed
    };
    let (points, missing) = resolve_symbols(elf, data, prefix, entry_points);
    if let Some(required) = REQUIRED.iter().find(|symbol| missing.contains(symbol)) {
        return Err(Error::AllocatorObject {
            path: object.to_owned(),
            reason: format!(
                "exports no `{prefix}{required}`; pass the allocator's shared object with \
                 --allocator-object"
            ),
        });
    }
    Ok(AllocatorProbes {
        object: object.to_owned(),
        points,
        missing,
    })
}

/// The probe points of the functions `prefix` + name of `entry_points` that `elf` defines, and
/// the names it does not.
fn resolve_symbols(
    elf: &object::File<'_>,
    data: &[u8],
    prefix: &str,
    entry_points: &[(&'static str, EntryPoint, bool)],
) -> (Vec<ProbePoint>, Vec<&'static str>) {
    let text = executable_range(elf);
    let mut points: Vec<ProbePoint> = Vec::new();
    let mut missing = Vec::new();
    for &(symbol, entry_point, with_return) in entry_points {
        let Some(offset) = symbol_address(elf, &format!("{prefix}{symbol}"))
            .and_then(|address| file_offset(elf, address))
        else {
            missing.push(symbol);
            continue;
        };
        let offset = probe_offset(data, offset, entry_point);
        add_point(
            &mut points,
            ProbeKind::Entry,
            entry_point,
            symbol,
            offset,
            text,
        );
        if with_return {
            add_point(
                &mut points,
                ProbeKind::Return,
                entry_point,
                symbol,
                offset,
                text,
            );
        }
    }
    (points, missing)
}

fn add_point(
    points: &mut Vec<ProbePoint>,
    kind: ProbeKind,
    entry_point: EntryPoint,
    symbol: &'static str,
    offset: u64,
    text: Option<(u64, u64)>,
) {
    let (probe_to_text_start, text_len) = text
        .filter(|&(start, end)| offset >= start && offset < end)
        .and_then(|(start, end)| {
            Some((
                u32::try_from(offset - start).ok()?,
                u32::try_from(end - start).ok()?,
            ))
        })
        .unwrap_or((0, 0));
    let cookie = Cookie::new(entry_point, probe_to_text_start, text_len);
    match points
        .iter_mut()
        .find(|point| point.offset == offset && point.kind == kind)
    {
        Some(point) => point.symbols.push(symbol),
        None => points.push(ProbePoint {
            kind,
            symbols: vec![symbol],
            offset,
            cookie,
        }),
    }
}

fn symbol_address(elf: &object::File<'_>, name: &str) -> Option<u64> {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find(|symbol| symbol.is_definition() && symbol.name() == Ok(name) && symbol.address() != 0)
        .map(|symbol| symbol.address())
}

/// File offsets spanned by the executable segment (the text). Within one segment, file offsets
/// and addresses differ by a constant, so distances measured here hold at run time.
fn executable_range(elf: &object::File<'_>) -> Option<(u64, u64)> {
    let executable: Vec<(u64, u64)> = elf
        .segments()
        .filter(|segment| {
            matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0)
        })
        .map(|segment| segment.file_range())
        .collect();
    // Distances across segments are not constant: keep the cookie for a single text only.
    match executable.as_slice() {
        [(start, size)] => Some((*start, start + size)),
        _ => None,
    }
}

/// Uprobes are placed by file offset: translate through the loadable segment holding `address`.
fn file_offset(elf: &object::File<'_>, address: u64) -> Option<u64> {
    elf.segments().find_map(|segment| {
        let (file_start, file_size) = segment.file_range();
        let start = segment.address();
        (address >= start && address < start + file_size).then(|| address - start + file_start)
    })
}

/// Where to put the probes of a function at file offset `offset`. The kernel emulates a few
/// instructions at a probe (push, jumps, calls, nops) and single-steps any other out of line,
/// which costs a few µs more per hit. Allocator entry points often start with a check that
/// only sets flags (glibc's `free`: `test %rdi,%rdi`; jemalloc's `cmp $0x1000,%rdi`): the
/// probe goes past such instructions to the first emulated one, as long as every instruction
/// passed runs on every call (no branch), writes no memory, leaves the stack pointer alone
/// (so the return address is still at the top of the stack, for the return probe) and leaves
/// alone the argument registers `entry_point`'s program reads. Otherwise it stays at the entry.
fn probe_offset(data: &[u8], offset: u64, entry_point: EntryPoint) -> u64 {
    use iced_x86::{FlowControl, InstructionInfoFactory, Mnemonic, OpAccess};
    let Some(code) = usize::try_from(offset).ok().and_then(|at| data.get(at..)) else {
        return offset;
    };
    let read = arguments_read(entry_point);
    let mut decoder = Decoder::with_ip(
        64,
        &code[..code.len().min(64)],
        offset,
        DecoderOptions::NONE,
    );
    let mut info = InstructionInfoFactory::new();
    for _ in 0..6 {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        // Relative jumps and calls, conditional jumps, push of a register.
        let emulated = instruction.is_jcc_short_or_near()
            || instruction.is_jmp_short_or_near()
            || instruction.is_call_near()
            || instruction.mnemonic() == Mnemonic::Push
                && instruction.op0_kind() == iced_x86::OpKind::Register;
        if emulated {
            return instruction.ip();
        }
        let info = info.info(&instruction);
        let writes = |access: OpAccess| {
            !matches!(
                access,
                OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
            )
        };
        let harmless = instruction.flow_control() == FlowControl::Next
            && info
                .used_memory()
                .iter()
                .all(|memory| !writes(memory.access()))
            && info.used_registers().iter().all(|used| {
                let register = used.register().full_register();
                !writes(used.access()) || (register != Register::RSP && !read.contains(&register))
            });
        if !harmless {
            break;
        }
    }
    offset
}

/// The argument registers the entry program reads for `entry_point` (`on_entry`).
fn arguments_read(entry_point: EntryPoint) -> &'static [Register] {
    use Register::{RCX, RDI, RDX, RSI};
    match entry_point {
        EntryPoint::Malloc
        | EntryPoint::Valloc
        | EntryPoint::Free
        | EntryPoint::Sigaltstack
        | EntryPoint::RustAlloc
        | EntryPoint::RustAllocZeroed
        | EntryPoint::RustDealloc => &[RDI],
        EntryPoint::Calloc | EntryPoint::Realloc | EntryPoint::Munmap | EntryPoint::Ptrace => {
            &[RDI, RSI]
        }
        EntryPoint::Reallocarray => &[RDI, RSI, RDX],
        EntryPoint::PosixMemalign | EntryPoint::Mremap => &[RDI, RDX],
        EntryPoint::Memalign | EntryPoint::Mmap => &[RSI],
        EntryPoint::RustRealloc => &[RDI, RCX],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_glibc_entry_point_once_per_address() {
        let libc = find_libc().expect("this test binary links glibc");
        let probes = resolve(&libc, None).expect("glibc exports malloc and free");
        assert!(probes.missing.is_empty(), "missing: {:?}", probes.missing);
        // glibc 2.36 aliases aligned_alloc to memalign: 15 entry points at 14 addresses, 14
        // entry probes (free's one past its first instruction) and 10 return probes.
        assert_eq!(probes.points_of(ProbeKind::Entry).count(), 14);
        assert_eq!(probes.points_of(ProbeKind::Return).count(), 10);
        let entry = |wanted: EntryPoint| {
            probes
                .points_of(ProbeKind::Entry)
                .find(|p| p.cookie.entry() == Some(wanted))
                .unwrap()
        };
        assert_ne!(
            entry(EntryPoint::Free).cookie.text_len(),
            0,
            "free knows libc's text"
        );
        assert_ne!(
            entry(EntryPoint::Mmap).cookie.text_len(),
            0,
            "mmap knows libc's text"
        );
        assert_eq!(
            entry(EntryPoint::Memalign).symbols,
            ["aligned_alloc", "memalign"]
        );
        assert_eq!(entry(EntryPoint::Ptrace).symbols, ["ptrace"]);
        // Every cookie names its entry point: the one entry program dispatches on it.
        assert!(probes.points.iter().all(|p| p.cookie.entry().is_some()));
    }

    #[test]
    fn probes_skip_flag_checks_to_the_first_emulated_instruction() {
        // glibc's free: test %rdi,%rdi ; je ...: the probe goes on the je.
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0, 0, 0, 0];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Free), 3);
        // jemalloc's malloc: cmp $0x1000,%rdi ; ja ...
        let code = [0x48, 0x81, 0xff, 0, 0x10, 0, 0, 0x77, 0x10];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Malloc), 7);
        // endbr64 ; push %rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Malloc), 4);
        // push %r12 (glibc malloc's prologue) is emulated: it stays put.
        let code = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Malloc), 0);
        // mov %rsi,%rdx ; jmp ...: realloc reads rsi, and rdx is not read.
        let code = [0x48, 0x89, 0xf2, 0xeb, 0x00];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Realloc), 3);
        // mov %rdi,%rsi ; jmp ...: realloc reads rsi, which the mov writes.
        let code = [0x48, 0x89, 0xfe, 0xeb, 0x00];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Realloc), 0);
        // sub $8,%rsp ; jmp ...: the return address would no longer be on top.
        let code = [0x48, 0x83, 0xec, 0x08, 0xeb, 0x00];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Malloc), 0);
        // mov %rax,(%rip) ; jmp ...: writes memory.
        let code = [0x48, 0x89, 0x05, 0, 0, 0, 0, 0xeb, 0x00];
        assert_eq!(probe_offset(&code, 0, EntryPoint::Malloc), 0);
    }
}
