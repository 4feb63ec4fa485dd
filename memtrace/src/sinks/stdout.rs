//! Events on stdout, as text or JSON lines (output/text.rs, output/json.rs).

use tokio::io::{AsyncWriteExt as _, Stdout};

use super::{Event, Sink, SinkError};
use crate::output::Format;

pub struct StdoutSink {
    out: Stdout,
    format: Format,
}

impl StdoutSink {
    pub fn new(format: Format) -> Self {
        Self {
            out: tokio::io::stdout(),
            format,
        }
    }
}

impl Sink for StdoutSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let mut line = ev.line(self.format);
        line.push('\n');
        self.out
            .write_all(line.as_bytes())
            .await
            .map_err(|e| SinkError::io("writing to stdout", e))?;
        self.out
            .flush()
            .await
            .map_err(|e| SinkError::io("writing to stdout", e))
    }
}
