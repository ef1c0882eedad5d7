//! `cargo memleak kernel`: tracepoints on the kernel's allocators, periodic reports by kernel
//! stack. The test makes the kernel allocate something recognizable — 500 eventfds, each a
//! kmalloc'd context in `do_eventfd` — holds it, then frees it.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

use memleak_tests::{Periodic, frames, privileged, stacks_of, symbol_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const EVENTFDS: u64 = 500;

/// Allocations on stacks whose allocating frame is kmalloc's, called from `do_eventfd`.
fn eventfd_contexts(report: &Value) -> u64 {
    stacks_of(report)
        .iter()
        .filter(|stack| {
            let frames = frames(stack);
            frames.len() > 1
                && symbol_of(&frames[0]).contains("kmalloc")
                && symbol_of(&frames[1]) == "do_eventfd"
        })
        .map(|stack| stack["allocations"].as_u64().expect("a count"))
        .sum()
}

fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts are readable")
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("tracefs"))
}

#[test]
fn kernel_reports_what_the_kernel_allocated_by_stack_until_it_is_freed() {
    if !privileged("kernel_reports_what_the_kernel_allocated_by_stack_until_it_is_freed") {
        return;
    }
    let mounted_before = tracefs_mounted();
    // Frees the tracepoints miss (bulk frees, frees while a BPF program runs on the CPU) are
    // drops without --wa-missing-free: see kernel_counts_the_frees_it_missed.
    let mut memleak = Periodic::start(&[
        "kernel",
        "--wa-missing-free",
        "--older",
        "0",
        "--sort",
        "count",
        "-T",
        "300",
        "--format",
        "json",
        "0.3",
    ]);
    memleak.wait_for_stderr("Attaching to kernel allocators", WAIT);
    let before = memleak.wait_for_report("a first report", WAIT, |_| true);
    let held_before = eventfd_contexts(&before);

    let eventfds: Vec<OwnedFd> = (0..EVENTFDS)
        .map(|_| {
            // SAFETY: plain system call; a non-negative result is a descriptor we now own.
            let fd = unsafe { nix::libc::eventfd(0, nix::libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: see above.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    let held = memleak.wait_for_report("the eventfd contexts", WAIT, |report| {
        eventfd_contexts(report) >= held_before + EVENTFDS
    });
    assert_eq!(held["target"], "kernel");
    assert_eq!(
        held["dropped"],
        serde_json::json!({}),
        "{:#}",
        held["dropped"]
    );
    let stack = stacks_of(&held)
        .iter()
        .find(|stack| frames(stack).iter().any(|f| symbol_of(f) == "do_eventfd"))
        .expect("a stack through do_eventfd");
    let syscall = frames(stack)
        .iter()
        .any(|frame| symbol_of(frame).contains("sys_eventfd2"));
    assert!(syscall, "the system call is on the stack: {stack:#}");

    drop(eventfds);
    let freed = memleak.wait_for_report("the contexts freed", WAIT, |report| {
        eventfd_contexts(report) + EVENTFDS <= eventfd_contexts(&held)
    });
    assert!(freed["counters"]["frees"].as_u64().unwrap_or(0) >= EVENTFDS);

    interrupt(&mut memleak);
    assert_eq!(
        tracefs_mounted(),
        mounted_before,
        "tracefs is left as it was found (mounted, if at all, in the run's own namespace)"
    );
}

/// Sends Ctrl-C and checks the run ends cleanly.
fn interrupt(memleak: &mut Periodic) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(memleak.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT sent");
    let (code, stderr) = memleak.wait_exit(WAIT);
    assert_eq!(code, 0, "Ctrl-C ends the run cleanly: {stderr}");
    assert!(
        stderr.contains("memleak: interrupted; detaching"),
        "{stderr}"
    );
}

/// A new network namespace allocates per-CPU statistics (`ipv4_mib_init_net` and more); a
/// thread of the test makes one and holds it.
#[test]
fn kernel_percpu_traces_per_cpu_allocations() {
    if !privileged("kernel_percpu_traces_per_cpu_allocations") {
        return;
    }
    let mut memleak = Periodic::start(&[
        "kernel", "--percpu", "--older", "0", "-T", "100", "-a", "--format", "json", "0.3",
    ]);
    memleak.wait_for_stderr(
        "percpu:percpu_alloc_percpu, percpu:percpu_free_percpu",
        WAIT,
    );
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (made, netns) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        // Only this thread moves to the new namespace.
        made.send(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
            .expect("the test waits");
        let _ = stopped.recv();
    });
    netns
        .recv()
        .expect("the thread reports")
        .expect("a network namespace is made");
    let report = memleak.wait_for_report("the namespace's per-CPU memory", WAIT, |report| {
        stacks_of(report).iter().any(|stack| {
            let frames = frames(stack);
            !frames.is_empty()
                && symbol_of(&frames[0]).contains("pcpu_alloc")
                && frames.iter().any(|frame| symbol_of(frame) == "copy_net_ns")
        })
    });
    assert_eq!(report["target"], "kernel");
    assert_eq!(report["incomplete"], serde_json::json!([]), "{report:#}");
    // Per-CPU pointers are addresses, never taken for page frame numbers.
    for stack in stacks_of(&report) {
        for alloc in stack["allocs"].as_array().expect("-a lists allocations") {
            assert!(
                alloc["addr"].is_u64() && alloc["pfn"].is_null(),
                "{alloc:#}"
            );
        }
    }
    let _ = stop.send(());
    holder.join().expect("the holder thread ends");
    interrupt(&mut memleak);
}

/// An allocation at an address still recorded means its free was missed: counted as
/// `missing_free`, a drop unless `--wa-missing-free` takes it for the old block's free.
#[test]
fn kernel_counts_the_frees_it_missed() {
    if !privileged("kernel_counts_the_frees_it_missed") {
        return;
    }
    for (flag, missing_is_drop) in [(Some("--wa-missing-free"), false), (None, true)] {
        let mut args = vec!["kernel", "--format", "json", "0.3", "4"];
        args.extend(flag);
        let mut memleak = Periodic::start(&args);
        memleak.wait_for_stderr("Attaching to kernel allocators", WAIT);
        let mut last = Value::Null;
        for _ in 0..4 {
            last = memleak.wait_for_report("a report", WAIT, |_| true);
            let counted = last["counters"]["missing_free"]
                .as_u64()
                .unwrap_or_else(|| panic!("missing_free is counted: {last:#}"));
            let dropped = last["dropped"]["missing_free"].as_u64().unwrap_or(0);
            let expected = if missing_is_drop { counted } else { 0 };
            assert_eq!(dropped, expected, "{flag:?}: {last:#}");
        }
        let (code, stderr) = memleak.wait_exit(WAIT);
        let missed = last["counters"]["missing_free"].as_u64().unwrap_or(0);
        let expected = if missing_is_drop && missed > 0 { 3 } else { 0 };
        assert_eq!(
            code, expected,
            "{flag:?}, {missed} missed: {stderr}\nthe last report: {last:#}"
        );
    }
}
