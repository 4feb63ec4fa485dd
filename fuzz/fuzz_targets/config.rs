//! The config file: TOML text → `Config::parse`, then `validate`, as `memtrace watch --config`
//! does (memtrace/src/config/mod.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        // What the user sees: the key and one line saying what is wrong.
        Err((key, message)) => {
            assert!(!key.is_empty(), "an error names a key: {message:?}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        Ok(cfg) => {
            if let Err(e) = cfg.validate() {
                assert!(!e.to_string().contains('\n'), "one line: {e}");
            }
            // Tokens never reach a log line: Debug shows them as ***.
            let dbg = format!("{cfg:?}");
            let tokens = [
                cfg.sinks.webhook.as_ref().and_then(|c| c.bearer_token.as_ref()),
                cfg.sinks
                    .alertmanager
                    .as_ref()
                    .and_then(|c| c.bearer_token.as_ref()),
            ];
            for t in tokens.into_iter().flatten() {
                let t = t.expose();
                // Only a token that the rest of the file does not also spell out.
                if t.len() >= 12 && text.matches(t).count() == 1 {
                    assert!(!dbg.contains(t), "a bearer token in the config's Debug output");
                }
            }
        }
    }
});
