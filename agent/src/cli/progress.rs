//! Pull progress on stderr: a bar per layer on a terminal (indicatif), short log lines
//! otherwise (one per layer start, resume, retry and end: never one per chunk).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_images::{text, Digest, Event, Progress};

use super::human_size;

pub struct Reporter {
    quiet: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    by_digest: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Reporter {
    pub fn new(tty: bool, quiet: bool) -> Reporter {
        let bars = (tty && !quiet).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            style: ProgressStyle::with_template(
                "{prefix} {bar:30.cyan/blue} {decimal_bytes:>9}/{decimal_total_bytes:<9} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
            by_digest: Mutex::new(HashMap::new()),
        });
        Reporter { quiet, bars }
    }

    /// Clears the bars (before the final lines are printed).
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            if let Ok(mut m) = b.by_digest.lock() {
                for (_, bar) in m.drain() {
                    bar.finish_and_clear();
                }
            }
            let _ = b.multi.clear();
        }
    }

    fn line(&self, s: String) {
        let s = text::one_line(&s, text::MESSAGE_MAX);
        match &self.bars {
            Some(b) => b.multi.suspend(|| eprintln!("{s}")),
            None => eprintln!("{s}"),
        }
    }

    fn bar(&self, digest: &Digest, size: u64) -> Option<ProgressBar> {
        let b = self.bars.as_ref()?;
        let mut m = b.by_digest.lock().ok()?;
        Some(
            m.entry(digest.clone())
                .or_insert_with(|| {
                    let bar = b.multi.add(ProgressBar::new(size));
                    bar.set_style(b.style.clone());
                    bar.set_prefix(digest.short());
                    bar
                })
                .clone(),
        )
    }
}

impl Progress for Reporter {
    fn event(&self, e: &Event) {
        if self.quiet {
            if let Event::Warning(w) = e {
                eprintln!("skiff: warning: {}", text::one_line(w, text::MESSAGE_MAX));
            }
            return;
        }
        match e {
            Event::Waiting(s) => self.line(s.clone()),
            Event::Resolved { digest, platform, layers, .. } => self
                .line(format!("resolved {digest} ({platform}, {layers} layer{})", if *layers == 1 { "" } else { "s" })),
            Event::LayerPresent { digest, size } => {
                self.line(format!("layer {} ({}): already present", digest.short(), human_size(*size)))
            }
            Event::LayerStart { digest, size, offset } => match self.bar(digest, *size) {
                Some(bar) => {
                    bar.set_position(*offset);
                    if *offset > 0 {
                        bar.set_message(format!("resumed at {}", human_size(*offset)));
                    }
                }
                None if *offset > 0 => self.line(format!(
                    "layer {} ({}): resuming at {}",
                    digest.short(),
                    human_size(*size),
                    human_size(*offset)
                )),
                None => self.line(format!("layer {} ({}): downloading", digest.short(), human_size(*size))),
            },
            Event::LayerProgress { digest, done, size } => {
                if let Some(bar) = self.bar(digest, *size) {
                    bar.set_position(*done);
                    if done == size {
                        bar.set_message("unpacking");
                    }
                }
            }
            Event::LayerDone { digest } => {
                // A finished layer leaves its bar for a line above the bars still running.
                let size = self.bars.as_ref().and_then(|b| {
                    let bar = b.by_digest.lock().ok()?.remove(digest)?;
                    bar.finish_and_clear();
                    b.multi.remove(&bar);
                    bar.length()
                });
                match size {
                    Some(n) => self.line(format!("layer {} ({}): done", digest.short(), human_size(n))),
                    None => self.line(format!("layer {}: done", digest.short())),
                }
            }
            Event::Retry { what, attempt, delay, error } => {
                self.line(format!("{what}: attempt {attempt} failed ({error}); retrying in {}", fmt_delay(*delay)))
            }
            Event::Warning(w) => self.line(format!("skiff: warning: {w}")),
        }
    }
}

fn fmt_delay(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
