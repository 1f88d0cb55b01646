//! Library logs go to the host, never to stdout/stderr: `tracing` events are formatted
//! and handed to the callback the host registered (`sdxl_set_log_callback`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use once_cell::sync::OnceCell;
use parking_lot::RwLock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// (level 0 = error … 4 = trace, target, message).
pub type LogSink = Box<dyn Fn(u32, &str, &str) + Send + Sync>;

static SINK: RwLock<Option<LogSink>> = RwLock::new(None);
/// Most verbose level forwarded: 0 error, 1 warn, 2 info, 3 debug, 4 trace.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(2);
static INSTALLED: OnceCell<bool> = OnceCell::new();

pub fn level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

/// Sets (or clears) the host sink. Installs the forwarding subscriber the first time,
/// unless the process already has a global `tracing` subscriber (then that one wins).
pub fn set_sink(sink: Option<LogSink>, max_level: u32) {
    MAX_LEVEL.store(max_level.min(4) as usize, Ordering::SeqCst);
    *SINK.write() = sink;
    INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(HostSubscriber { next_span: AtomicU64::new(1) }).is_ok());
}

struct HostSubscriber {
    next_span: AtomicU64,
}

struct MessageVisitor {
    message: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.message, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.message, " {}={value}", field.name());
        }
    }
}

impl Subscriber for HostSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) as usize <= MAX_LEVEL.load(Ordering::Relaxed) && SINK.read().is_some()
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = MessageVisitor { message: String::new() };
        event.record(&mut visitor);
        if let Some(sink) = SINK.read().as_ref() {
            // A sink that panics loses its line; the code that logged carries on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(level_number(event.metadata().level()), event.metadata().target(), &visitor.message)));
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
