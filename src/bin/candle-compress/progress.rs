//! The progress bar of the long-running commands, drawn on stderr and hidden under
//! `--json` so that stdout stays one JSON document.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress line: what runs, the bar, the count (the message once).
pub(crate) const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len}";

/// A bar of `len` steps labelled `what`; invisible when `json` is set.
pub(crate) fn progress(len: usize, json: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
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
