//! The error a command ends with: one line for the user and an exit status.

use std::fmt;

#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub status: i32,
}

impl CliError {
    /// A refusal or failure, exit status 1.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            status: 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::membership::lock::Refusal> for CliError {
    fn from(r: crate::membership::lock::Refusal) -> CliError {
        CliError::new(r.0)
    }
}

/// Shorthand for building a [`CliError`] with `format!` arguments.
#[macro_export]
macro_rules! cli_error {
    ($($arg:tt)*) => {
        $crate::commands::error::CliError::new(format!($($arg)*))
    };
}
