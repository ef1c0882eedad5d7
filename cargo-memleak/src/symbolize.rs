//! Turns return addresses into frames (demangled names, file:line, inlined calls) with
//! blazesym, while the traced process is stopped at its exit and its memory map still exists.
//!
//! Invariants: a frame that cannot be symbolized is still a frame, carrying its address and the
//! reason (partial failure is data); one address expands to several frames when calls were
//! inlined at it, innermost first.

use std::collections::HashMap;

use blazesym::{
    Pid,
    symbolize::{self, Symbolized, source::Source},
};
use serde::Serialize;

/// One frame of a stack, as shown to the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Return address in the traced process (not shown in anything compared across runs).
    #[serde(skip)]
    pub addr: u64,
    /// Demangled function name; `None` when unknown.
    pub symbol: Option<String>,
    /// Offset of the return address from the function's start (0 for inlined frames).
    pub offset: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the object the code belongs to.
    pub module: Option<String>,
    /// The call was inlined into the next frame.
    pub inlined: bool,
    /// Why the frame has no symbol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
}

impl Frame {
    /// A frame without a symbol, and why.
    pub fn unknown(addr: u64, reason: String) -> Self {
        unknown(addr, reason, None)
    }
}

pub struct Symbolizer {
    inner: symbolize::Symbolizer,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let inner = symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self { inner }
    }

    /// Symbolizes return addresses of the stopped (or live) process `pid`.
    pub fn symbolize(&self, pid: u32, return_addrs: &[u64]) -> HashMap<u64, Vec<Frame>> {
        let mut process = symbolize::source::Process::new(Pid::from(pid));
        // Symbolic paths instead of /proc/PID/map_files: the parsed files are cached by path,
        // so the next process running the same binary costs nothing to symbolize.
        process.map_files = false;
        process.perf_map = false;
        self.symbolize_in(&Source::Process(process), return_addrs)
    }

    /// Symbolizes return addresses in the running kernel (kallsyms, or a vmlinux with debug
    /// information when one is installed).
    pub fn symbolize_kernel(&self, return_addrs: &[u64]) -> HashMap<u64, Vec<Frame>> {
        let kernel = symbolize::source::Kernel::default();
        self.symbolize_in(&Source::Kernel(kernel), return_addrs)
    }

    fn symbolize_in(&self, source: &Source<'_>, return_addrs: &[u64]) -> HashMap<u64, Vec<Frame>> {
        // A return address points past the call; the call itself is one byte earlier.
        let call_sites: Vec<u64> = return_addrs
            .iter()
            .map(|addr| addr.saturating_sub(1))
            .collect();
        let results = match self
            .inner
            .symbolize(source, symbolize::Input::AbsAddr(&call_sites))
        {
            Ok(results) => results,
            Err(err) => {
                let reason = err.to_string();
                return return_addrs
                    .iter()
                    .map(|&addr| (addr, vec![unknown(addr, reason.clone(), None)]))
                    .collect();
            }
        };
        return_addrs
            .iter()
            .zip(results)
            .map(|(&addr, result)| (addr, frames_of(addr, result)))
            .collect()
    }
}

fn unknown(addr: u64, reason: String, module: Option<String>) -> Frame {
    Frame {
        addr,
        symbol: None,
        offset: 0,
        file: None,
        line: None,
        module,
        inlined: false,
        unknown_reason: Some(reason),
    }
}

fn location(info: Option<&symbolize::CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match info {
        Some(info) => (Some(info.to_path().display().to_string()), info.line),
        None => (None, None),
    }
}

fn frames_of(addr: u64, result: Symbolized<'_>) -> Vec<Frame> {
    let sym = match result {
        Symbolized::Sym(sym) => sym,
        Symbolized::Unknown(reason) => return vec![unknown(addr, reason.to_string(), None)],
    };
    let module = sym
        .module
        .as_ref()
        .map(|m| m.to_string_lossy().into_owned());
    // blazesym lists inlined calls outermost first, each with the location inside that
    // inlined function (the innermost one's is the instruction's); the symbol's own code info
    // is the location inside the real function, where the outermost inlined call sits.
    // Shown innermost first, like every other frame.
    let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = location(inlined.code_info.as_ref());
        frames.push(Frame {
            addr,
            symbol: Some(inlined.name.to_string()),
            offset: 0,
            file,
            line,
            module: module.clone(),
            inlined: true,
            unknown_reason: None,
        });
    }
    let (file, line) = location(sym.code_info.as_deref());
    frames.push(Frame {
        addr,
        symbol: Some(sym.name.to_string()),
        // Offset of the return address, as BCC and gdb show it.
        offset: sym.offset as u64 + 1,
        file,
        line,
        module,
        inlined: false,
        unknown_reason: None,
    });
    frames
}
