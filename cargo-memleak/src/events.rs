//! `--trace`: every allocation and free as it happens, like BCC memleak's `-t`. The eBPF
//! programs write one [`TraceEvent`] per recorded allocation and per free of a recorded block
//! into a ring buffer; a thread of ours reads it and prints one line per event to stderr
//! (stdout carries the periodic reports, one JSON object per line with `--format json`).
//!
//! Invariants: a line the programs could not write (the ring buffer was full) is counted in
//! the traced process's `trace_lost` drop counter, so the report that follows is incomplete;
//! the reader empties the buffer once more after it is told to stop, so every event written
//! before the stop is printed, in the order the programs committed them.

use std::{
    collections::HashMap,
    io::Write as _,
    os::fd::AsFd as _,
    sync::mpsc::{Receiver, Sender, TryRecvError, channel},
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use memleak_common::TraceEvent;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{report::render_frame, symbolize::Symbolizer};

/// Whose addresses the events carry: a process's (user stacks) or the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    User,
    Kernel,
}

/// The thread printing trace lines; [`Printer::stop`] ends it after the last event.
pub struct Printer {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Printer {
    /// Starts printing the events of `ring` (none when `--trace` is off).
    pub fn start(ring: Option<RingBuf<MapData>>, space: Space) -> Option<Self> {
        let ring = ring?;
        let (stop, stopped) = channel();
        let thread = std::thread::spawn(move || print_events(ring, space, &stopped));
        Some(Self { stop, thread })
    }

    /// Prints what is left in the ring buffer, then ends the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn print_events(mut ring: RingBuf<MapData>, space: Space, stopped: &Receiver<()>) {
    let symbolizer = Symbolizer::new();
    let mut frames: HashMap<(u32, u64), String> = HashMap::new();
    loop {
        // Checked before the buffer is emptied, so that the last pass comes after the stop.
        let stop = !matches!(stopped.try_recv(), Err(TryRecvError::Empty));
        let mut lines = String::new();
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                lines.push_str(&line(&event, space, &symbolizer, &mut frames));
                lines.push('\n');
            }
        }
        if !lines.is_empty() {
            let _ = std::io::stderr().write_all(lines.as_bytes());
        }
        if stop {
            return;
        }
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        // Poll briefly: the stop comes through the channel, not the descriptor.
        let _ = poll(&mut fds, PollTimeout::from(50u8));
    }
}

fn decode(bytes: &[u8]) -> Option<TraceEvent> {
    if bytes.len() < std::mem::size_of::<TraceEvent>() {
        return None;
    }
    // SAFETY: the programs write whole TraceEvents (plain integers: any bits are valid);
    // read_unaligned copes with the ring buffer's 8-byte alignment of records.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceEvent>()) })
}

/// `[HH:MM:SS] alloc 100 bytes at 0x... pid P tid T from FRAME` or `... free ...`.
pub fn line(
    event: &TraceEvent,
    space: Space,
    symbolizer: &Symbolizer,
    frames: &mut HashMap<(u32, u64), String>,
) -> String {
    let kind = if event.kind == TraceEvent::FREE {
        "free"
    } else {
        "alloc"
    };
    let mut line = format!(
        "[{}] {kind} {} bytes at {:#x} pid {} tid {}",
        crate::report::text::clock_time(),
        event.size,
        event.addr,
        event.pid,
        event.tid
    );
    if event.kind == TraceEvent::ALLOC && event.frame != 0 {
        let pid = match space {
            Space::User => event.pid,
            Space::Kernel => 0,
        };
        let frame = frames.entry((pid, event.frame)).or_insert_with(|| {
            let symbolized = match space {
                Space::User => symbolizer.symbolize(event.pid, &[event.frame]),
                Space::Kernel => symbolizer.symbolize_kernel(&[event.frame]),
            };
            symbolized
                .get(&event.frame)
                .and_then(|frames| frames.first())
                .map(render_frame)
                .unwrap_or_else(|| format!("{:#x}", event.frame))
        });
        line.push_str(" from ");
        line.push_str(frame);
    }
    line
}
