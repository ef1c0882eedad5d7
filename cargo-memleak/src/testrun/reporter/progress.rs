//! The status line on stderr (human output, stderr a terminal), like nextest's: how many of the
//! run's tests are done (the count the `running N tests` header gave), and the tests running
//! now with how long each has run, the longest-running first; redrawn four times a second once
//! the run has lasted one, cut to the terminal's width, erased before anything else prints.
//!
//! Invariants: the line is erased before any other output of an event (this is the first
//! reporter to get each event, and it does not redraw for 200 ms after one) and never drawn
//! again after `TestsFinished`; its total is the number of tests that will run.

use std::{
    collections::BTreeMap,
    io::Write as _,
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
    /// `[binary id] test` of the running tests, and when each started.
    running: BTreeMap<String, Instant>,
    drawn: bool,
    /// No redraw before this: another reporter is about to print.
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
        let mut state = lock(&self.0.state);
        state.erase();
        state.quiet_until = Some(Instant::now() + Duration::from_millis(200));
        match event {
            TestEvent::RunStarted { tests, .. } => {
                state.total = tests.len();
                let line = Arc::clone(&self.0);
                std::thread::spawn(move || {
                    while !lock(&line.state).finished {
                        std::thread::sleep(Duration::from_millis(250));
                        line.draw();
                    }
                });
            }
            TestEvent::TestStarted { binary_id, test } => {
                state
                    .running
                    .insert(format!("[{binary_id}] {test}"), Instant::now());
            }
            TestEvent::TestFinished { result } => {
                state
                    .running
                    .remove(&format!("[{}] {}", result.binary_id, result.test));
                state.done += 1;
            }
            TestEvent::TestsFinished { .. } => state.finished = true,
            TestEvent::TestSlow { .. }
            | TestEvent::Interrupted { .. }
            | TestEvent::RunFinished { .. } => {}
        }
        Ok(())
    }
}

impl State {
    fn erase(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }

    /// `memleak: 3/14 done; running [beta] tests::hangs 12.1s, [alpha] x 0.3s`.
    fn text(&self, now: Instant) -> String {
        let mut running: Vec<(&String, Duration)> = self
            .running
            .iter()
            .map(|(name, since)| (name, now.duration_since(*since)))
            .collect();
        running.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let names: Vec<String> = running
            .iter()
            .map(|(name, time)| format!("{name} {:.1}s", time.as_secs_f64()))
            .collect();
        let mut text = format!("memleak: {}/{} done", self.done, self.total);
        if !names.is_empty() {
            text.push_str("; running ");
            text.push_str(&names.join(", "));
        }
        text
    }
}

impl Line {
    fn draw(&self) {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if state.finished
            || now.duration_since(self.start) < Duration::from_secs(1)
            || state.quiet_until.is_some_and(|until| now < until)
        {
            return;
        }
        let width = terminal_width().saturating_sub(1);
        let text: String = state.text(now).chars().take(width).collect();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[K{text}");
        let _ = stderr.flush();
        state.drawn = true;
    }
}

/// The terminal's width in columns (stderr's), 80 when it cannot be read.
fn terminal_width() -> usize {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given, which lives here.
    let read = unsafe { nix::libc::ioctl(2, nix::libc::TIOCGWINSZ, &raw mut size) };
    if read == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_running_tests_longest_first() {
        let now = Instant::now();
        let mut state = State {
            done: 3,
            total: 14,
            ..State::default()
        };
        state
            .running
            .insert("[alpha] quick".into(), now - Duration::from_millis(300));
        state.running.insert(
            "[beta] tests::hangs".into(),
            now - Duration::from_millis(12_100),
        );
        assert_eq!(
            state.text(now),
            "memleak: 3/14 done; running [beta] tests::hangs 12.1s, [alpha] quick 0.3s"
        );
    }
}
