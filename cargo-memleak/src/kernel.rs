//! Kernel allocators (BCC memleak without `-p`): the tracepoints on kmalloc/kfree,
//! kmem_cache_alloc/free and page allocations (or, with `--percpu`, per-CPU allocations), and
//! where their records keep what the programs read. `cargo memleak kernel` drives them
//! ([`crate::commands::kernel`]).
//!
//! The tracepoints' record layouts move between kernel versions, so the field offsets come from
//! tracefs's `format` files at run time, never from constants. When tracefs is not mounted, it
//! is mounted in a private mount namespace of this process: nothing changes for the rest of
//! the machine, and nothing is left behind, even when several runs overlap.
//!
//! Invariants: kprobes are not needed (this kernel kind has none); every event is attached or
//! the run fails with the event's name.

use std::path::{Path, PathBuf};

use memleak_common::{KernelFields, PAGE_KEY_BASE};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

use crate::{
    error::{Error, Result},
    tracer::KernelEvent,
};

const fn event(program: &'static str, category: &'static str) -> KernelEvent {
    KernelEvent {
        program,
        category,
        name: program,
    }
}

/// Slab and page allocations: BCC's default kernel set.
const DEFAULT_EVENTS: &[KernelEvent] = &[
    event("kmalloc", "kmem"),
    event("kfree", "kmem"),
    event("kmem_cache_alloc", "kmem"),
    event("kmem_cache_free", "kmem"),
    event("mm_page_alloc", "kmem"),
    event("mm_page_free", "kmem"),
];

/// `--percpu`: per-CPU allocations instead.
const PERCPU_EVENTS: &[KernelEvent] = &[
    event("percpu_alloc_percpu", "percpu"),
    event("percpu_free_percpu", "percpu"),
];

/// The tracepoints to attach: the default set, or `--percpu`'s.
pub fn events(percpu: bool) -> &'static [KernelEvent] {
    if percpu {
        PERCPU_EVENTS
    } else {
        DEFAULT_EVENTS
    }
}

/// The page frame number of an ALLOCS key, when it is a page's (see `PAGE_KEY_BASE`). Slab
/// addresses are far above any frame number; per-CPU pointers are not (measured: 0x6079...),
/// so this only applies when pages, and not per-CPU allocations, are traced.
pub fn page_frame(key: u64) -> Option<u64> {
    (PAGE_KEY_BASE..1 << 52)
        .contains(&key)
        .then(|| key - PAGE_KEY_BASE)
}

/// Where tracefs is mounted.
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    const ROOT: &str = "/sys/kernel/tracing";
    const DEBUGFS_ROOT: &str = "/sys/kernel/debug/tracing";

    /// Where it is mounted already, if anywhere.
    fn find() -> Option<Self> {
        [Self::ROOT, Self::DEBUGFS_ROOT]
            .into_iter()
            .find(|root| Path::new(root).join("events").is_dir())
            .map(|root| Self { root: root.into() })
    }

    /// Whether it is mounted (mounting it needs CAP_SYS_ADMIN), read from the mount table:
    /// tracefs itself is root's 0700, so looking into it may fail while it is there.
    pub fn is_mounted() -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts.lines().any(|line| {
            let mut fields = line.split(' ').skip(1);
            matches!(
                (fields.next(), fields.next()),
                (Some(Self::ROOT), Some("tracefs")) | (Some("/sys/kernel/debug"), Some("debugfs"))
            )
        })
    }

    pub fn find_or_mount() -> Result<Self> {
        if let Some(tracefs) = Self::find() {
            return Ok(tracefs);
        }
        // This thread's own mount namespace (the process has no other threads yet), with
        // propagation cut so the mount stays in it.
        unshare(CloneFlags::CLONE_NEWNS)
            .and_then(|()| {
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
            })
            .and_then(|()| {
                mount(
                    Some("tracefs"),
                    Self::ROOT,
                    Some("tracefs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
            })
            .map_err(|err| Error::Tracefs {
                reason: format!(
                    "tracefs is not mounted and mounting it failed ({err}); mount it with \
                     `mount -t tracefs nodev {}`",
                    Self::ROOT
                ),
            })?;
        Ok(Self {
            root: Self::ROOT.into(),
        })
    }

    /// Reads the offsets of the fields the programs use.
    pub fn fields(&self, percpu: bool) -> Result<KernelFields> {
        let mut fields = KernelFields {
            // SAFETY: sysconf has no preconditions.
            page_size: u32::try_from(unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) })
                .unwrap_or(4096),
            ..KernelFields::ZERO
        };
        if percpu {
            let alloc = self.format("percpu", "percpu_alloc_percpu")?;
            fields.percpu_alloc_ptr = alloc.offset("ptr")?;
            fields.percpu_alloc_bytes = alloc.offset("bytes_alloc")?;
            fields.percpu_free_ptr = self.format("percpu", "percpu_free_percpu")?.offset("ptr")?;
            return Ok(fields);
        }
        let kmalloc = self.format("kmem", "kmalloc")?;
        fields.kmalloc_ptr = kmalloc.offset("ptr")?;
        fields.kmalloc_bytes = kmalloc.offset("bytes_alloc")?;
        fields.kfree_ptr = self.format("kmem", "kfree")?.offset("ptr")?;
        let cache_alloc = self.format("kmem", "kmem_cache_alloc")?;
        fields.cache_alloc_ptr = cache_alloc.offset("ptr")?;
        fields.cache_alloc_bytes = cache_alloc.offset("bytes_alloc")?;
        fields.cache_free_ptr = self.format("kmem", "kmem_cache_free")?.offset("ptr")?;
        let page_alloc = self.format("kmem", "mm_page_alloc")?;
        fields.page_alloc_pfn = page_alloc.offset("pfn")?;
        fields.page_alloc_order = page_alloc.offset("order")?;
        let page_free = self.format("kmem", "mm_page_free")?;
        fields.page_free_pfn = page_free.offset("pfn")?;
        fields.page_free_order = page_free.offset("order")?;
        Ok(fields)
    }

    fn format(&self, category: &str, name: &str) -> Result<Format> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|err| Error::Tracefs {
            reason: format!(
                "tracepoint {category}:{name} is missing ({}: {err})",
                path.display()
            ),
        })?;
        Ok(Format {
            event: format!("{category}:{name}"),
            text,
        })
    }
}

/// A tracepoint's `format` file.
struct Format {
    event: String,
    text: String,
}

impl Format {
    /// The byte offset of field `name` in the event's record.
    fn offset(&self, name: &str) -> Result<u32> {
        self.text
            .lines()
            .filter_map(|line| {
                // `\tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;`
                let mut parts = line.trim().split(';');
                let declaration = parts.next()?.strip_prefix("field:")?;
                let field = declaration.split_whitespace().last()?;
                let field = field.split('[').next()?;
                let offset = parts.next()?.trim().strip_prefix("offset:")?.parse().ok()?;
                Some((field, offset))
            })
            .find_map(|(field, offset)| (field == name).then_some(offset))
            .ok_or_else(|| Error::Tracefs {
                reason: format!(
                    "tracepoint {} has no field `{name}` (an unsupported kernel version?)",
                    self.event
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kmem:kmem_cache_alloc` on Linux 6.18.
    const CACHE_ALLOC: &str = "name: kmem_cache_alloc\nID: 512\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;\n\
        \tfield:size_t bytes_req;\toffset:32;\tsize:8;\tsigned:0;\n\
        \tfield:size_t bytes_alloc;\toffset:40;\tsize:8;\tsigned:0;\n\n\
        print fmt: \"call_site=%pS ptr=%p bytes_req=%zu\", REC->call_site, REC->ptr\n";

    #[test]
    fn offsets_come_from_the_format_file() {
        let format = Format {
            event: "kmem:kmem_cache_alloc".into(),
            text: CACHE_ALLOC.into(),
        };
        assert_eq!(format.offset("ptr").unwrap(), 16);
        assert_eq!(format.offset("bytes_alloc").unwrap(), 40);
        assert_eq!(format.offset("name").unwrap(), 24);
        let missing = format.offset("pfn").unwrap_err().to_string();
        assert_eq!(
            missing,
            "kernel tracepoints: tracepoint kmem:kmem_cache_alloc has no field `pfn` (an \
             unsupported kernel version?)"
        );
    }

    #[test]
    fn page_keys_are_told_from_addresses() {
        assert_eq!(page_frame(PAGE_KEY_BASE), Some(0));
        assert_eq!(page_frame(PAGE_KEY_BASE + 0x1234), Some(0x1234));
        assert_eq!(page_frame(0xffff_8880_0123_4000), None);
    }
}
