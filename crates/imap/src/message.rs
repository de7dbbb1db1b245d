//! Reading one message's bytes from the store on a blocking thread (blob reads hash
//! the whole file), with the context an alert needs if the blob is damaged.

use store::{MessageRecord, ReadContext, Slot};

/// The message `rec` of `mailbox`, or `None` when its blob is missing or damaged
/// (the store has already raised the alert; the caller reports the UID).
pub(crate) async fn read_message(
    slot: &Slot,
    user: &str,
    mailbox: &str,
    rec: &MessageRecord,
) -> Option<Vec<u8>> {
    let (s, hash) = (slot.clone(), rec.blob);
    let ctx = ReadContext {
        user: Some(user.to_string()),
        mailbox: Some(mailbox.to_string()),
        uid: Some(rec.uid.0),
    };
    match tokio::task::spawn_blocking(move || s.read_blob(&hash, &ctx)).await {
        Ok(Ok(bytes)) => Some(bytes),
        _ => None,
    }
}
