//! Per-session state of the extensions implemented outside the selected-mailbox engine
//! (SEARCHRES, NOTIFY, COMPRESS, the command-rate and per-user connection limits), and
//! the capabilities they add. Kept in one struct so `session.rs` carries one field.

use store::Uid;

use crate::limits::{CommandRate, ConnGuard};
use crate::notify::Watch;
use crate::resp::Reply;
use crate::session::Session;

/// Extension state of one connection. `Default` is the state at connect time.
#[derive(Default)]
pub(crate) struct ExtState {
    /// RFC 5182 SEARCHRES: the UIDs of the last `SEARCH RETURN (SAVE)`, in UID order.
    /// Empty until a search saves (RFC 5182 2.1: `$` then means the empty set); reset
    /// when the selected mailbox changes.
    pub saved: Vec<Uid>,
    /// RFC 5465 NOTIFY: what the client asked to hear about; `None` after NOTIFY NONE.
    pub notify: Option<Watch>,
    /// RFC 4978: compression is on (COMPRESS is refused a second time).
    pub compressed: bool,
    /// Commands-per-second limiter (`ImapConfig::commands_per_second`).
    pub rate: CommandRate,
    /// Counts this session against the per-user connection limit while logged in.
    pub user_conn: Option<ConnGuard>,
    /// What the client said in `ID` (RFC 2971), for the TLS policy's records; bounded by
    /// `auth::CLIENT_ID_BYTES_MAX`.
    pub client_id: String,
}

/// Advertised in every state once they work (see `docs/imap.md`).
const CAPS_ANY_STATE: &str = " ESEARCH SEARCHRES WITHIN LIST-EXTENDED LIST-STATUS STATUS=SIZE \
SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES QUOTA QUOTA=RES-STORAGE BINARY \
MULTIAPPEND UTF8=ACCEPT OBJECTID PREVIEW CREATE-SPECIAL-USE NOTIFY";

impl Session {
    /// The capabilities this module's extensions add, each with a leading space.
    pub(crate) fn ext_capabilities(&self) -> String {
        let mut caps = CAPS_ANY_STATE.to_string();
        if self.user.is_some() {
            caps.push_str(" UNAUTHENTICATE");
            if !self.ext.compressed {
                caps.push_str(" COMPRESS=DEFLATE");
            }
        }
        caps
    }

    /// A mailbox name as this session writes it: UTF-8 after `ENABLE UTF8=ACCEPT` (or
    /// IMAP4rev2), else modified UTF-7.
    pub(crate) fn mailbox_name_out(&self, name: &str) -> Vec<u8> {
        imap_proto::write::encode_mailbox(name, self.parse_opts.utf8_mailboxes)
    }

    /// `Some(NO [LIMIT])` when this command is over the per-connection command rate.
    pub(crate) fn over_command_rate(&mut self) -> Option<Reply> {
        let per_second = self.server.config.commands_per_second;
        if self.ext.rate.allow(per_second, std::time::Instant::now()) {
            return None;
        }
        Some(Reply::no(format!(
            "[LIMIT] Too many commands (limit {per_second} per second); command not run, slow down"
        )))
    }
}
