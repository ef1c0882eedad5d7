//! A progress line on stderr for long runs (human output, stderr a terminal): redrawn every
//! half second once a run has lasted two, and erased before libtest prints each result.
//!
//! Invariants: the line is erased before any other output of the run's end (it is the first
//! reporter to get each event) and never drawn again after `TestsFinished`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Reporter, TestEvent};
use crate::error::Result;

/// The progress reporter; its drawing thread starts with the run.
pub struct Progress(Arc<Line>);

struct Line {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    done: usize,
    /// Tests that will run (selected, not ignored).
    total: usize,
    drawn: bool,
    /// No redraw before this: libtest is about to print a result line.
    quiet_until: Option<Instant>,
    finished: bool,
}

impl Progress {
    pub fn new() -> Self {
        Self(Arc::new(Line {
            start: Instant::now(),
            state: Mutex::new(State::default()),
        }))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for Progress {
    fn report(&self, event: &TestEvent) -> Result<()> {
        match event {
            TestEvent::RunStarted { tests, .. } => {
                lock(&self.0.state).total = *tests;
                let line = Arc::clone(&self.0);
                std::thread::spawn(move || {
                    while !lock(&line.state).finished {
                        std::thread::sleep(Duration::from_millis(500));
                        line.draw();
                    }
                });
            }
            TestEvent::TestFinished { .. } => self.0.test_done(),
            TestEvent::TestsFinished { .. } => self.0.finish(),
            TestEvent::RunFinished { .. } => {}
        }
        Ok(())
    }
}

impl Line {
    /// A test finished: erase the line so libtest's result line starts clean.
    fn test_done(&self) {
        let mut state = lock(&self.state);
        state.done += 1;
        if state.drawn {
            eprint!("\r\x1b[K");
            state.drawn = false;
        }
        state.quiet_until = Some(Instant::now() + Duration::from_millis(200));
    }

    fn draw(&self) {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if state.finished
            || now.duration_since(self.start) < Duration::from_secs(2)
            || state.quiet_until.is_some_and(|until| now < until)
        {
            return;
        }
        eprint!(
            "\r\x1b[Kmemleak: {}/{} tests done, {:.0} s",
            state.done,
            state.total,
            now.duration_since(self.start).as_secs_f64()
        );
        state.drawn = true;
    }

    fn finish(&self) {
        let mut state = lock(&self.state);
        if state.drawn {
            eprint!("\r\x1b[K");
        }
        state.finished = true;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
