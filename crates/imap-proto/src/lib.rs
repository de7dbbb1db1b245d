//! IMAP grammar for Tandem: command framing, command parsing and response-writing
//! helpers. Pure functions over bytes: no I/O, no async, no store types.
//!
//! The session crate feeds socket bytes to a [`Framer`], which splits them into whole
//! commands (literal payloads included) while keeping memory bounded by [`Limits`];
//! each command goes to [`parse_command`], which yields the [`Command`] AST from
//! `types.rs`. Responses are rendered with the helpers in [`write`].
//!
//! Grammar covered: IMAP4rev1 (RFC 3501), IMAP4rev2 (RFC 9051) and the extensions
//! listed in `parse.rs`.

pub mod frame;
pub mod mutf7;
pub mod parse;
pub mod types;
pub mod write;

pub use frame::{Frame, Framer, Limits, LineTooLong};
pub use mutf7::{Mutf7Error, mutf7_decode, mutf7_encode};
pub use parse::{ParseError, ParseOptions, parse_command};
pub use types::*;
