//! `cargo memleak test`: build the test targets, run every test as its own traced process, and
//! judge each against its leak budget ([`crate::testrun`] runs and reports them).

use crate::{
    build::{BuildOptions, TestSelection},
    error::Result,
    outcome::Outcome,
    testrun::{self, TestOptions},
};

/// `cargo memleak test`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    pub selection: TestSelection,
    pub run: TestOptions,
}

pub fn test(options: &Options) -> Result<Outcome> {
    testrun::run(&options.build, &options.selection, options.run.clone())
}
