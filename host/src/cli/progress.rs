//! Progress on a TTY: a spinner with a rolling tail of apptainer's output,
//! a byte bar while hashing, and how long a wait for another process's
//! lock has lasted. Quiet when stderr is not a terminal, but for one line
//! when a wait begins.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sifr::Progress;

use super::Globals;

pub struct Display {
    bar: Option<ProgressBar>,
    hashing: bool,
    quiet: bool,
    /// What we are waiting for, once the wait has been announced.
    waiting_on: Option<String>,
}

impl Display {
    pub fn new(globals: &Globals) -> Self {
        let tty = std::io::stderr().is_terminal() && !globals.quiet;
        Self {
            bar: None,
            hashing: false,
            quiet: globals.quiet,
            waiting_on: None,
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
            Progress::Waiting {
                identity,
                waited,
                limit,
            } => self.waiting(
                &format!("waiting for another sifr pulling {identity}"),
                waited,
                Some(limit),
            ),
            Progress::Attempt { uri, index, of } => {
                self.hashing = false;
                self.waiting_on = None;
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

    /// A wait for another process: announced once (a line, TTY or not),
    /// then, on a TTY, the spinner says how long it has lasted (first, so
    /// that a narrow terminal cuts the image's name, not the time).
    pub fn waiting(&mut self, what: &str, waited: Duration, limit: Option<Duration>) {
        if self.waiting_on.as_deref() != Some(what) {
            self.waiting_on = Some(what.to_string());
            self.hashing = false;
            self.note(what);
            if let Some(bar) = &self.bar {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                        .expect("a valid template"),
                );
                bar.set_message(what.to_string());
            }
        }
        if let Some(bar) = &self.bar {
            let so_far = humantime::format_duration(Duration::from_secs(waited.as_secs()));
            bar.set_prefix(match limit {
                Some(limit) => format!(
                    "waited {so_far} of at most {}:",
                    humantime::format_duration(limit)
                ),
                None => format!("waited {so_far}:"),
            });
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
