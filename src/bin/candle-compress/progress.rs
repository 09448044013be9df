//! The progress bar of the long-running commands, drawn on stderr and hidden under
//! `--json` so that stdout stays one JSON document.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress line: what runs, the bar, the count (the message once).
pub(crate) const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len}";

/// A bar labelled with what runs, fed by the library's `progress(done, total)` callbacks;
/// invisible under `--json`, cleared when dropped.
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A bar labelled `what`; invisible when `json` is set.
    pub(crate) fn new(json: bool, what: &str) -> Self {
        let bar = ProgressBar::new(0);
        if json {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(bar)
    }

    /// Shows `done` of `total` steps.
    pub(crate) fn step(&self, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::BAR_TEMPLATE;

    #[test]
    fn the_progress_bar_prints_its_message_once() {
        assert_eq!(BAR_TEMPLATE.matches("msg}").count(), 1);
        indicatif::ProgressStyle::with_template(BAR_TEMPLATE).expect("a valid template");
    }
}
