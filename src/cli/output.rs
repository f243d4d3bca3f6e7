//! Printing results and errors, as text or as JSON.

use serde::Serialize;

use crate::error::Error;

/// Where and how results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// JSON on stdout instead of text.
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `text()` as text.
    pub fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
            }
        } else {
            print!("{}", text());
        }
    }

    /// Prints an error: `{"error": code, "message": …}` on stdout in JSON
    /// mode, `error[code]: message` on stderr otherwise.
    pub fn error(&self, err: &Error) {
        if self.json {
            let body = serde_json::json!({ "error": err.code(), "message": err.to_string() });
            println!("{body}");
        } else {
            eprintln!("error[{}]: {err}", err.code());
        }
    }
}
