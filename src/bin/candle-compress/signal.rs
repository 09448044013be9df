//! Interrupt handling: an unfinished output must not be left behind as a temporary file.

use std::io::Write;

/// Ends the process on Ctrl-C, `SIGTERM` or `SIGHUP` after removing the temporary file of
/// an unfinished output (destructors do not run when a signal ends a process), with the
/// shell's exit status for that signal (128 + its number).
pub(crate) fn remove_partial_output_on_signal() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return; // no handler: the default action (exit) still applies
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            candle_compress::io::remove_temp_files();
            let _ = writeln!(std::io::stderr(), "\ninterrupted; no output written");
            std::process::exit(128 + signal);
        }
    });
}
