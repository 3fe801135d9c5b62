//! Progress on a terminal for the commands people watch run (`standalone --once`, `tags`,
//! `inspect`): units done of total, the requests sent by kind, their rate and the time
//! left. Shown only when standard error is a terminal and logs are text; in a pipe, a file
//! or with `--log-format json` nothing but the log lines is written. Log lines written
//! meanwhile step around the display (`telemetry::show_progress`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::registry::RequestKind;
use crate::telemetry::LogFormat;

/// Where the request counts come from (a registry client's or a pass's statistics).
pub type Requests = Arc<dyn Fn() -> BTreeMap<RequestKind, u64> + Send + Sync>;

/// A live display, or nothing when it is not wanted.
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// The message after the bar, as of now (the ticker and `finish` both draw it).
    render: Arc<dyn Fn() -> String + Send + Sync>,
    /// Units of work beside the requests (tags cached), for the message.
    pub items: Arc<AtomicU64>,
}

/// Whether a display is wanted: standard error is a terminal and logs are text.
pub fn wanted(format: LogFormat) -> bool {
    format == LogFormat::Text && std::io::stderr().is_terminal()
}

impl Progress {
    /// A bar of `total` `unit`s (`watches`); `items` names what `Progress::items` counts.
    pub fn bar(
        format: LogFormat,
        total: u64,
        unit: &str,
        items: &'static str,
        requests: Requests,
    ) -> Progress {
        let template = format!(
            "{{spinner}} {{elapsed_precise}} [{{bar:24}}] {{pos}}/{{len}} {unit} · {{msg}} · ETA {{eta}}"
        );
        Progress::start(format, Some(total), &template, items, requests)
    }

    /// A spinner for work of unknown size (`listing tags of REPO`).
    pub fn spinner(format: LogFormat, what: &str, requests: Requests) -> Progress {
        let template = format!("{{spinner}} {{elapsed_precise}} {what} · {{msg}}");
        Progress::start(format, None, &template, "", requests)
    }

    fn start(
        format: LogFormat,
        total: Option<u64>,
        template: &str,
        items: &'static str,
        requests: Requests,
    ) -> Progress {
        let counted = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let count = counted.clone();
        let render: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(move || message(&requests(), started.elapsed(), items, &count));
        if !wanted(format) {
            return Progress {
                bar: None,
                ticker: None,
                render,
                items: counted,
            };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("the templates are valid")
                .progress_chars("=> "),
        );
        crate::telemetry::show_progress(Some(bar.clone()));
        let (shown, line) = (bar.clone(), render.clone());
        let ticker = tokio::spawn(async move {
            loop {
                shown.set_message(line());
                shown.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
            render,
            items: counted,
        }
    }

    /// One unit done.
    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Ends the display, leaving its last line, with the final counts, on screen.
    pub fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.set_message((self.render)());
            bar.finish();
            crate::telemetry::show_progress(None);
        }
    }
}

/// `tags 1200 · 412 req/s · tag_list 3, manifest_head 1200, manifest_get 20`.
fn message(
    requests: &BTreeMap<RequestKind, u64>,
    elapsed: Duration,
    items: &str,
    count: &AtomicU64,
) -> String {
    let total: u64 = requests.values().sum();
    let rate = total as f64 / elapsed.as_secs_f64().max(0.001);
    let kinds: Vec<String> = requests
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    let mut parts = Vec::new();
    if !items.is_empty() {
        parts.push(format!("{items} {}", count.load(Ordering::Relaxed)));
    }
    parts.push(format!("{total} requests, {rate:.0}/s"));
    if !kinds.is_empty() {
        parts.push(kinds.join(", "));
    }
    parts.join(" · ")
}
