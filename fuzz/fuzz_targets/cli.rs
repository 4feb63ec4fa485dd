//! The command line: arguments separated by NUL bytes (any bytes: arguments need not be UTF-8).
#![no_main]

use std::{ffi::OsString, os::unix::ffi::OsStringExt as _};

use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use memtrace::cli::Cli;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsString::from("memtrace"))
        .chain(data.split(|&b| b == 0).map(|a| OsString::from_vec(a.to_vec())));
    match Cli::try_parse_from(args) {
        Ok(cli) => {
            let _ = format!("{cli:?}");
        }
        Err(e) => {
            // What the user sees (help and version are "errors" too).
            let _ = e.render().to_string();
        }
    }
});
