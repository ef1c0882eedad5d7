//! `cargo memleak kernel`: trace the kernel's allocators through tracepoints (slab and pages,
//! or per-CPU with `--percpu`) and report what is outstanding by kernel stack every INTERVAL,
//! like BCC's `memleak` without `-p`.
//!
//! Invariants: the signals are blocked before any thread exists; the tracepoints come off when
//! the tracer is dropped, on every path out of the loop; the outcome is incomplete when any
//! report was.

use crate::{
    error::Result,
    events::{self, Space},
    kernel::{self, Tracefs},
    outcome::Outcome,
    report,
    symbolize::Symbolizer,
    tracer::{KernelTracer, Limits, Recording},
    watch::{self, End, Interrupts},
};

/// `cargo memleak kernel`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Per-CPU allocations instead of slab and page allocations.
    pub percpu: bool,
    pub periodic: watch::Options,
    pub limits: Limits,
    /// Sampling, per-stack totals, trace lines.
    pub recording: Recording,
}

pub fn kernel(options: &Options) -> Result<Outcome> {
    let percpu = options.percpu;
    let periodic = &options.periodic;
    let interrupts = Interrupts::block()?;
    let tracefs = Tracefs::find_or_mount()?;
    let events = kernel::events(percpu);
    let fields = tracefs.fields(percpu)?;
    let mut tracer = KernelTracer::attach(events, &fields, options.limits, options.recording)?;
    let printer = events::Printer::start(tracer.take_events()?, Space::Kernel);
    let names: Vec<String> = events
        .iter()
        .map(|event| format!("{}:{}", event.category, event.name))
        .collect();
    eprintln!(
        "Attaching to kernel allocators ({}), Ctrl+C to quit.",
        names.join(", ")
    );
    let symbolizer = Symbolizer::new();
    let mut incomplete = false;
    let end = watch::every(periodic, &interrupts, None, None, || {
        let trace = tracer.read()?;
        // Per-CPU pointers are small enough to pass for frame numbers: only the default set
        // traces pages.
        let pfn_of = |key| {
            if percpu {
                None
            } else {
                kernel::page_frame(key)
            }
        };
        let snapshot = report::snapshot("kernel", &trace, &periodic.report, pfn_of, |addrs| {
            symbolizer.symbolize_kernel(addrs)
        });
        incomplete |= !snapshot.incomplete.is_empty();
        print!(
            "{}",
            report::render_periodic(&snapshot, periodic.format, &periodic.style)
        );
        Ok(())
    });
    drop(tracer);
    if let Some(printer) = printer {
        printer.stop();
    }
    if end? == End::Interrupted {
        eprintln!("memleak: interrupted; detaching");
    }
    Ok(if incomplete {
        Outcome::Incomplete
    } else {
        Outcome::Ok
    })
}
