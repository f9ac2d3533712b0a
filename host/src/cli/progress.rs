//! Progress on a TTY: a spinner with a rolling tail of apptainer's output,
//! and a byte bar while hashing. Quiet when stderr is not a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sifr::Progress;

use super::Globals;

pub struct Display {
    bar: Option<ProgressBar>,
    hashing: bool,
    quiet: bool,
}

impl Display {
    pub fn new(globals: &Globals) -> Self {
        let tty = std::io::stderr().is_terminal() && !globals.quiet;
        Self {
            bar: None,
            hashing: false,
            quiet: globals.quiet,
        }
        .with_tty(tty)
    }

    fn with_tty(mut self, tty: bool) -> Self {
        if tty {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg:.dim}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
        self
    }

    /// Handle one progress event. Warnings and fallbacks are always shown
    /// (unless --quiet); the rest only on a TTY.
    pub fn update(&mut self, event: Progress<'_>) {
        match event {
            Progress::Waiting { identity } => {
                self.note(&format!("waiting for another sifr pulling {identity}"))
            }
            Progress::Attempt { uri, index, of } => {
                self.hashing = false;
                if let Some(bar) = &self.bar {
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} {wide_msg:.dim}")
                            .expect("a valid template"),
                    );
                    bar.set_prefix(format!("pulling {uri} ({index}/{of})"));
                    bar.set_message("");
                }
            }
            Progress::Output { line } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(line.trim().to_string());
                }
            }
            Progress::Fallback { uri, failure, next } => {
                let then = match next {
                    Some(next) => format!("; falling back to {next}"),
                    None => String::new(),
                };
                let first = failure.to_string();
                let first = first.lines().next().unwrap_or_default();
                self.warn(&format!("pull from {uri} failed: {first}{then}"));
            }
            Progress::Hashing { done, total } => {
                if let Some(bar) = &self.bar {
                    if !self.hashing {
                        self.hashing = true;
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} hashing {bytes}/{total_bytes} ({bytes_per_sec}) {wide_bar}",
                            )
                            .expect("a valid template"),
                        );
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                }
            }
            Progress::Warning { message } => self.warn(message),
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("sifr: {message}")),
            None if !self.quiet => eprintln!("sifr: {message}"),
            None => {}
        }
    }

    fn warn(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("sifr: warning: {message}")),
            None if !self.quiet => eprintln!("sifr: warning: {message}"),
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}
