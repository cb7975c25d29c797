//! A progress bar on stderr while a cycle runs, only when stderr is a
//! terminal; piped output stays quiet.

use std::io::IsTerminal;

use compactor_engine::{Manager, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// The bar of one command.
pub(crate) struct Bar(Option<ProgressBar>);

impl Bar {
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Shows the manager's progress on stderr if it is a terminal.
pub(crate) fn attach(manager: &Manager) -> Bar {
    if !std::io::stderr().is_terminal() {
        return Bar(None);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>8} [{bar:30}] {pos}/{len} batches {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let shown = bar.clone();
    manager.subscribe(move |event| match event {
        Progress::TierStarted { tier, batches } => {
            shown.set_prefix(tier);
            shown.set_length(batches as u64);
            shown.set_position(0);
        }
        Progress::BatchDone { record } => {
            shown.inc(1);
            shown.set_message(record.batch.partition_path);
        }
        Progress::Recovered { .. } | Progress::CycleFinished { .. } => {}
    });
    Bar(Some(bar))
}
