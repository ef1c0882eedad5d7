//! Ctrl-C and SIGTERM during a test run, as nextest takes them: the first one stops the run
//! (no new test starts, the running ones are killed, the results so far are reported); a
//! second one ends the process at once.
//!
//! Invariants: the signal handlers only set atomics (signal-hook's flag handlers, which are
//! async-signal-safe), or exit at once for the second signal; everything else happens on the
//! runner's thread, which polls [`Interrupt::signal`]. The actions are unregistered when the
//! `Interrupt` is dropped.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use signal_hook::{SigId, consts::signal};

use crate::{
    error::{Error, Result},
    outcome::Signal,
};

/// SIGINT and SIGTERM caught for the length of a test run.
pub struct Interrupt {
    received: Arc<AtomicUsize>,
    handlers: Vec<SigId>,
}

impl Interrupt {
    /// Catches SIGINT and SIGTERM: the first sets the flag, a second exits at once with its
    /// code (130 or 143).
    pub fn install() -> Result<Self> {
        let caught = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let mut handlers = Vec::new();
        for sig in [Signal::Int, Signal::Term] {
            let number = sig.number();
            // Registered first, so it runs before the flag is set: it exits only when an
            // earlier signal set it already.
            let register = || -> std::io::Result<[SigId; 3]> {
                Ok([
                    signal_hook::flag::register_conditional_shutdown(
                        number,
                        i32::from(sig.exit_code()),
                        Arc::clone(&caught),
                    )?,
                    signal_hook::flag::register_usize(
                        number,
                        Arc::clone(&received),
                        number as usize,
                    )?,
                    signal_hook::flag::register(number, Arc::clone(&caught))?,
                ])
            };
            handlers.extend(register().map_err(Error::io("catching SIGINT and SIGTERM"))?);
        }
        Ok(Self { received, handlers })
    }

    /// The first signal received, if any.
    pub fn signal(&self) -> Option<Signal> {
        match self.received.load(Ordering::SeqCst) as i32 {
            signal::SIGINT => Some(Signal::Int),
            signal::SIGTERM => Some(Signal::Term),
            _ => None,
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
