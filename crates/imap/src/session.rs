//! One client connection: the read loop, the state machine, response writing, STARTTLS.
//!
//! States (RFC 3501 3): not authenticated (`user == None`), authenticated (`user` set),
//! selected (`selected` set), logout (the loop ends). Commands run one at a time, in
//! the order received; pipelined commands are simply queued in the framer.
//!
//! Limits: the framer bounds what is buffered from the client (`ImapConfig::limits`);
//! responses are flushed whenever more than `OUT_FLUSH_BYTES` are pending; each read
//! and write has a timeout. `BAD_IN_A_ROW_MAX` consecutive bad commands end the session.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use imap_proto::{Command, CommandKind, Frame, Framer, ParseOptions, parse_command};
use store::{ChangeNotice, Slot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use crate::resp::{Reply, Status};
use crate::selected::Selected;
use crate::{CAPABILITIES_BASE, ImapServer};

/// Pending output is written out once it grows past this (large FETCHes).
pub(crate) const OUT_FLUSH_BYTES: usize = 256 * 1024;
/// Consecutive BAD responses before the session is closed.
const BAD_IN_A_ROW_MAX: u32 = 20;
/// Bytes read from the socket by the read that waits for the client: kept inline and
/// small, because an idle session sits in that read (see `read_more`).
const READ_FIRST_BYTES: usize = 512;
/// Bytes read at a time once data is flowing (a heap buffer, only while reading).
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes drained from the socket per `read_more` beyond the first read, so one client
/// streaming a large literal cannot monopolise the task between framer passes.
const READ_BURST_BYTES_MAX: usize = 256 * 1024;
/// Output buffer capacity kept between commands; a larger one (after a big FETCH) is
/// freed when the session goes idle.
const OUT_KEEP_BYTES: usize = 4 * 1024;
/// A client that does not read its responses for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection, plain or TLS (after STARTTLS or on the imaps port).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// RFC 4978 COMPRESS=DEFLATE over the plain or TLS stream.
    Deflate(Box<crate::compress::Deflate<Stream>>),
    /// Transient state while STARTTLS hands the socket to the TLS acceptor.
    Closed,
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed_error())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed_error())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("client did not read its responses for {0:?}")]
    WriteTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// The logged-in user.
pub(crate) struct UserCtx {
    /// The account address, which is also the user's name in the store.
    pub name: String,
    pub slot: Slot,
    /// Durable-change notices of the user's slot (IDLE waits on these).
    pub notices: broadcast::Receiver<ChangeNotice>,
}

/// What the client turned on: RFC 5161 ENABLE, and the RFC 7162 commands that enable
/// CONDSTORE implicitly (SELECT (CONDSTORE), FETCH MODSEQ/CHANGEDSINCE, SEARCH MODSEQ,
/// STORE UNCHANGEDSINCE). Nothing is ever turned off again in a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Enabled {
    /// RFC 7162 CONDSTORE: MODSEQ in every FETCH caused by a flag change.
    pub condstore: bool,
    /// RFC 7162 QRESYNC (implies CONDSTORE): VANISHED instead of EXPUNGE.
    pub qresync: bool,
    /// RFC 9051 IMAP4rev2: no RECENT/`\Recent`/UNSEEN, ESEARCH for SEARCH, LIST in SELECT.
    pub rev2: bool,
}

/// What the read loop does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// What a read from the client produced.
pub(crate) enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
}

pub(crate) struct Session {
    pub server: Arc<ImapServer>,
    pub peer: SocketAddr,
    pub stream: Stream,
    pub framer: Framer,
    /// The first read of each wait lands here (see `read_more`).
    rbuf: [u8; READ_FIRST_BYTES],
    /// Responses not yet written to the socket.
    pub out: Vec<u8>,
    pub tls: bool,
    pub user: Option<UserCtx>,
    pub selected: Option<Selected>,
    pub parse_opts: ParseOptions,
    bad_in_a_row: u32,
    /// CONDSTORE / QRESYNC / IMAP4rev2 as enabled by the client.
    pub enabled: Enabled,
    /// State of the extensions in `ext.rs` (SEARCHRES, NOTIFY, COMPRESS, limits).
    pub ext: crate::ext::ExtState,
}

/// Serves one connection to its end. Errors only end this connection.
pub(crate) async fn run(
    server: Arc<ImapServer>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
) {
    let stream = if implicit_tls {
        let Some(acceptor) = server.tls.clone() else {
            // An imaps listener without a certificate is a wiring mistake; refuse
            // rather than talk plaintext on a port clients trust to be encrypted.
            return;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Stream::Tls(Box::new(s)),
            _ => return,
        }
    } else {
        Stream::Plain(tcp)
    };
    let mut session = Session::new(server, peer, stream, implicit_tls);
    let greeting = format!("OK [CAPABILITY {}] Tandem ready", session.capabilities());
    let _ = session.serve(&greeting).await;
    let _ = session.stream.shutdown().await;
}

/// Serves a connection a frontend proxied here (see `ImapServer::serve_preauth`): the
/// session starts logged in as `user`, or says `* BYE` with the reason and ends.
pub(crate) async fn run_preauth(
    server: Arc<ImapServer>,
    stream: Stream,
    client: crate::ProxiedClient,
) {
    let mut session = Session::new(server, client.peer, stream, client.tls);
    session.ext.client_id = client.id;
    let reply = session.begin_preauth(&client.user).await;
    if reply.status == crate::resp::Status::Ok {
        let greeting = format!(
            "PREAUTH [CAPABILITY {}] Logged in as {}",
            session.capabilities(),
            client.user
        );
        let _ = session.serve(&greeting).await;
    } else {
        session.untagged(&format!("BYE {}", reply.text));
        let _ = session.flush().await;
    }
    let _ = session.stream.shutdown().await;
}

impl Session {
    fn new(server: Arc<ImapServer>, peer: SocketAddr, stream: Stream, tls: bool) -> Session {
        let mut limits = server.config.limits;
        // Only APPEND carries big literals; refuse anything larger up front, before the
        // client sends it.
        let append_max = usize::try_from(server.config.append_bytes_max).unwrap_or(usize::MAX);
        limits.literal_bytes_max = limits.literal_bytes_max.min(append_max);
        Session {
            server,
            peer,
            stream,
            framer: Framer::new(limits),
            rbuf: [0; READ_FIRST_BYTES],
            out: Vec::new(),
            tls,
            user: None,
            selected: None,
            parse_opts: ParseOptions::default(),
            bad_in_a_row: 0,
            enabled: Enabled::default(),
            ext: crate::ext::ExtState::default(),
        }
    }

    async fn serve(&mut self, greeting: &str) -> Result<(), SessionError> {
        self.untagged(greeting);
        self.flush().await?;
        loop {
            while let Some(frame) = self.framer.next() {
                if self.on_frame(frame).await? == Flow::Close {
                    self.flush().await?;
                    return Ok(());
                }
                if self.out.len() > OUT_FLUSH_BYTES {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            self.release_idle_memory();
            match self.read_or_notify(self.inactivity_limit()).await? {
                ReadOutcome::Data => {}
                ReadOutcome::Eof => return Ok(()),
                ReadOutcome::TimedOut => {
                    self.untagged("BYE Autologout; idle for too long");
                    self.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    pub(crate) fn inactivity_limit(&self) -> Duration {
        if self.user.is_some() {
            self.server.config.idle_timeout
        } else {
            self.server.config.unauth_timeout
        }
    }

    /// Gives back memory a busy moment left behind before the session waits for its
    /// client: an idle connection should cost a few KiB, not its largest response.
    pub(crate) fn release_idle_memory(&mut self) {
        if self.out.is_empty() && self.out.capacity() > OUT_KEEP_BYTES {
            self.out = Vec::new();
        }
        self.framer.release_spare_memory();
    }

    /// Reads what the client sent next into the framer. The wait uses the small inline
    /// buffer; if that fills, whatever else the socket already holds is drained with a
    /// heap buffer that lives only for this call (memory of idle sessions, above).
    pub(crate) async fn read_more(&mut self, limit: Duration) -> Result<ReadOutcome, SessionError> {
        let n = match tokio::time::timeout(limit, self.stream.read(&mut self.rbuf)).await {
            Err(_) => return Ok(ReadOutcome::TimedOut),
            Ok(Ok(0)) => return Ok(ReadOutcome::Eof),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
        };
        self.framer.push(&self.rbuf[..n]);
        if n < READ_FIRST_BYTES {
            return Ok(ReadOutcome::Data);
        }
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mut total = 0;
        while total < READ_BURST_BYTES_MAX {
            match read_now(&mut self.stream, &mut chunk).await {
                Some(Ok(0)) | None => break,
                Some(Ok(k)) => {
                    self.framer.push(&chunk[..k]);
                    total += k;
                }
                // Reported by the next read, after the data already read is served.
                Some(Err(_)) => break,
            }
        }
        Ok(ReadOutcome::Data)
    }

    /// ENABLE for the capabilities of the selected-mailbox engine (called by
    /// `cmd_enable`): the name to list in `* ENABLED` if this turned it on now, `None`
    /// if unknown here or already on (RFC 5161 3.2 lists only what this command did).
    pub(crate) fn enable_engine(&mut self, cap: &str) -> Option<&'static str> {
        let e = &mut self.enabled;
        match cap {
            "CONDSTORE" if !e.condstore => {
                e.condstore = true;
                Some("CONDSTORE")
            }
            "QRESYNC" if !e.qresync => {
                // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                e.qresync = true;
                e.condstore = true;
                Some("QRESYNC")
            }
            "IMAP4REV2" if !e.rev2 => {
                // RFC 9051 6.3.1: mailbox names are UTF-8 both ways from now on.
                e.rev2 = true;
                self.parse_opts.utf8_mailboxes = true;
                Some("IMAP4rev2")
            }
            _ => None,
        }
    }

    /// Writes pending responses to the client.
    pub(crate) async fn flush(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        let write = async {
            self.stream.write_all(&data).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => Err(SessionError::WriteTimeout(WRITE_TIMEOUT)),
            Ok(r) => {
                r?;
                // Keep the allocation for the next responses unless a big FETCH grew it.
                if data.capacity() <= OUT_FLUSH_BYTES * 2 {
                    self.out = data;
                    self.out.clear();
                }
                Ok(())
            }
        }
    }

    /// `* <text>\r\n`.
    pub(crate) fn untagged(&mut self, text: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(crate) fn tagged(&mut self, tag: &str, reply: &Reply) {
        self.out.extend_from_slice(tag.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(reply.status_word().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(reply.text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// May the client send a password now?
    pub(crate) fn login_allowed(&self) -> bool {
        self.tls || self.plaintext_refusal().is_none()
    }

    pub(crate) fn capabilities(&self) -> String {
        let mut caps = CAPABILITIES_BASE.to_string();
        if self.user.is_none() {
            if !self.tls && self.server.tls.is_some() {
                caps.push_str(" STARTTLS");
            }
            if self.login_allowed() {
                caps.push_str(" AUTH=PLAIN");
            } else {
                caps.push_str(" LOGINDISABLED");
            }
        }
        caps.push_str(&self.ext_capabilities());
        caps
    }

    /// Counts a BAD; past the limit the session ends (a client that only sends garbage
    /// is broken or hostile, and each BAD costs us a response).
    fn note_bad(&mut self) -> Flow {
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= BAD_IN_A_ROW_MAX {
            self.untagged("BYE Too many invalid commands");
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    fn answer_untagged_or(&mut self, tag: Option<String>, reply: Reply) -> Flow {
        match tag {
            Some(t) => self.tagged(&t, &reply),
            None => {
                let text = format!("{} {}", reply.status_word(), reply.text);
                self.untagged(&text);
            }
        }
        if reply.status == Status::Bad {
            self.note_bad()
        } else {
            Flow::Continue
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        match frame {
            Frame::NeedContinuation { .. } => {
                self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                Ok(Flow::Continue)
            }
            Frame::LineTooLong { tag } => {
                let max = self.framer.limits().line_bytes_max;
                Ok(self.answer_untagged_or(
                    tag,
                    Reply::bad(format!(
                        "Line too long (limit {max} bytes); command ignored"
                    )),
                ))
            }
            Frame::LiteralTooLarge { tag, literal_bytes } => {
                let max = self.framer.limits().literal_bytes_max;
                self.bad_in_a_row += 1;
                Ok(self.answer_untagged_or(
                    tag,
                    Reply::no(format!(
                        "[TOOBIG] Literal of {literal_bytes} bytes is over the limit of {max} bytes"
                    )),
                ))
            }
            Frame::Command(bytes) => match parse_command(&bytes, &self.parse_opts) {
                Ok(cmd) => self.dispatch(cmd).await,
                Err(e) => Ok(self.answer_untagged_or(e.tag, Reply::bad(e.message))),
            },
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Result<Flow, SessionError> {
        let Command { tag, kind } = cmd;
        if let Some(reply) = self.over_command_rate() {
            self.tagged(&tag, &reply);
            return Ok(Flow::Continue);
        }
        let kind = self.substitute_saved(kind);
        // RFC 3501 7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH (sequence
        // numbers the client is using would shift under it); the UID forms may have them.
        let allow_expunge = !matches!(
            kind,
            CommandKind::Fetch { uid: false, .. }
                | CommandKind::Store { uid: false, .. }
                | CommandKind::Search { uid: false, .. }
                | CommandKind::Sort { uid: false, .. }
                | CommandKind::Thread { uid: false, .. }
        );
        // Once CONDSTORE is on, commands that expunge end with the mailbox's
        // HIGHESTMODSEQ (as in RFC 7162's examples): EXPUNGE/VANISHED carry none.
        let expunges = matches!(
            kind,
            CommandKind::Expunge | CommandKind::UidExpunge(_) | CommandKind::Move { .. }
        );
        let read_only = matches!(kind, CommandKind::Examine { .. });
        let authed = self.user.is_some();
        let selected = self.selected.is_some();
        let not_authed = || Reply::bad("Log in first");
        let not_selected = || Reply::bad("No mailbox selected; use SELECT first");
        let reply = match kind {
            CommandKind::Capability => {
                let caps = format!("CAPABILITY {}", self.capabilities());
                self.untagged(&caps);
                Reply::ok("CAPABILITY completed")
            }
            CommandKind::Noop => Reply::ok("NOOP completed"),
            CommandKind::Logout => {
                self.untagged("BYE Tandem logging out");
                self.tagged(&tag, &Reply::ok("LOGOUT completed"));
                return Ok(Flow::Close);
            }
            CommandKind::Id(fields) => {
                self.ext.client_id = crate::auth::describe_client(fields.as_deref());
                self.untagged("ID (\"name\" \"Tandem\" \"vendor\" \"Tandem\")");
                Reply::ok("ID completed")
            }
            CommandKind::StartTls => {
                if authed {
                    Reply::bad("Already logged in")
                } else {
                    match self.cmd_starttls(&tag).await? {
                        Some(r) => r,
                        None => return Ok(Flow::Continue),
                    }
                }
            }
            CommandKind::Login { user, pass } => {
                if authed {
                    Reply::bad("Already logged in")
                } else {
                    self.cmd_login(&user, &pass).await
                }
            }
            CommandKind::Authenticate { mechanism, initial } => {
                if authed {
                    Reply::bad("Already logged in")
                } else {
                    self.cmd_authenticate(&mechanism, initial).await?
                }
            }
            _ if !authed => not_authed(),
            CommandKind::Enable(caps) => self.cmd_enable(&caps),
            CommandKind::Select {
                mailbox,
                condstore,
                qresync,
            }
            | CommandKind::Examine {
                mailbox,
                condstore,
                qresync,
            } => {
                self.cmd_select(&mailbox, read_only, condstore, qresync.as_ref())
                    .await
            }
            CommandKind::Create {
                mailbox,
                special_use,
            } => self.cmd_create(&mailbox, &special_use).await,
            CommandKind::Delete(name) => self.cmd_delete(&name).await,
            CommandKind::Rename { from, to } => self.cmd_rename(&from, &to).await,
            CommandKind::Subscribe(name) => self.cmd_subscribe(&name, true).await,
            CommandKind::Unsubscribe(name) => self.cmd_subscribe(&name, false).await,
            CommandKind::List(args) => self.cmd_list(&args),
            CommandKind::Lsub { reference, pattern } => self.cmd_lsub(&reference, &pattern),
            CommandKind::Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Reply::ok("NAMESPACE completed")
            }
            CommandKind::Status { mailbox, items } => {
                if items.contains(&imap_proto::StatusItem::HighestModSeq) {
                    // RFC 7162 3.1: STATUS (HIGHESTMODSEQ) is CONDSTORE-enabling.
                    self.enabled.condstore = true;
                }
                self.cmd_status(&mailbox, &items)
            }
            CommandKind::Append { mailbox, messages } => self.cmd_append(&mailbox, messages).await,
            CommandKind::Idle => self.cmd_idle().await?,
            CommandKind::Unauthenticate => self.cmd_unauthenticate(),
            CommandKind::GetQuota(root) => self.cmd_getquota(&root),
            CommandKind::GetQuotaRoot(mailbox) => self.cmd_getquotaroot(&mailbox),
            CommandKind::SetQuota { .. } => self.cmd_setquota(),
            CommandKind::Compress(mechanism) => match self.cmd_compress(&tag, &mechanism).await? {
                Some(r) => r,
                None => return Ok(Flow::Continue),
            },
            CommandKind::Notify(set) => self.cmd_notify(set),
            _ if !selected => not_selected(),
            CommandKind::Check => Reply::ok("CHECK completed"),
            CommandKind::Close => self.cmd_close().await,
            CommandKind::Unselect => {
                self.selected = None;
                Reply::ok("UNSELECT completed")
            }
            CommandKind::Expunge => self.cmd_expunge(None).await,
            CommandKind::UidExpunge(set) => self.cmd_expunge(Some(set)).await,
            CommandKind::Search { uid, args } => self.cmd_search(&tag, uid, &args).await?,
            CommandKind::Fetch { uid, args } => self.cmd_fetch(uid, &args).await?,
            CommandKind::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.cmd_store(uid, &set, mode, silent, &flags, unchanged_since)
                    .await
            }
            CommandKind::Copy { uid, set, mailbox } => {
                self.cmd_copy(uid, &set, &mailbox, false).await
            }
            CommandKind::Move { uid, set, mailbox } => {
                self.cmd_copy(uid, &set, &mailbox, true).await
            }
            CommandKind::Sort {
                uid,
                criteria,
                charset,
                keys,
            } => self.cmd_sort(uid, &criteria, &charset, &keys).await,
            CommandKind::Thread {
                uid,
                algorithm,
                charset,
                keys,
            } => self.cmd_thread(uid, algorithm, &charset, &keys).await,
        };
        if self.selected.is_some() && !self.sync_selected_and_announce(allow_expunge, !expunges) {
            self.untagged("BYE The selected mailbox was deleted; please reconnect");
            return Ok(Flow::Close);
        }
        let mut reply = reply;
        if expunges
            && self.enabled.condstore
            && reply.status == Status::Ok
            && !reply.text.starts_with('[')
            && let Some(sel) = &self.selected
        {
            reply.text = format!("[HIGHESTMODSEQ {}] {}", sel.highestmodseq.0, reply.text);
        }
        self.tagged(&tag, &reply);
        if reply.status == Status::Bad {
            Ok(self.note_bad())
        } else {
            self.bad_in_a_row = 0;
            Ok(Flow::Continue)
        }
    }

    /// Brings the selected mailbox's view up to date and queues the untagged responses
    /// (see `selected.rs`). Returns false when the mailbox no longer exists. Read
    /// failures are left for the next command (the view stays as it was).
    pub(crate) fn sync_selected(&mut self, allow_expunge: bool) -> bool {
        self.sync_selected_and_announce(allow_expunge, true)
    }

    /// [`Session::sync_selected`]. `announce_modseq`: once CONDSTORE is on, follow sent
    /// expunges with `* OK [HIGHESTMODSEQ n]`, a point where the client may record n
    /// (EXPUNGE/VANISHED carry no MODSEQ, and until the expunges are sent, a MODSEQ
    /// seen in a FETCH is not safe to resynchronise from). Commands that put it in
    /// their tagged OK pass false.
    fn sync_selected_and_announce(&mut self, allow_expunge: bool, announce_modseq: bool) -> bool {
        let modes = self.enabled;
        let (Some(user), Some(sel)) = (self.user.as_ref(), self.selected.as_mut()) else {
            return true;
        };
        let view = user.slot.view();
        let header = match view.mailbox(sel.id) {
            Ok(Some(h)) => h,
            Ok(None) => {
                self.selected = None;
                return false;
            }
            Err(_) => return true,
        };
        let announce = modes.condstore && announce_modseq;
        if header.highestmodseq <= sel.highestmodseq {
            if allow_expunge && sel.flush_expunges(&modes, &mut self.out) > 0 && announce {
                write_highestmodseq(&mut self.out, sel.highestmodseq);
            }
            return true;
        }
        let Ok(delta) = sel.read_delta(&view, &header) else {
            return true;
        };
        let (recent, slot_name, id, read_only) =
            (&self.server.recent, user.slot.name(), sel.id, sel.read_only);
        let mut claim = |last: u32| {
            if modes.rev2 {
                // IMAP4rev2 has no \Recent: take nothing from rev1 sessions.
                Some(u32::MAX)
            } else if read_only {
                recent.peek(slot_name, id)
            } else {
                recent.claim(slot_name, id, last)
            }
        };
        let flushed = sel.apply_delta(delta, &mut claim, allow_expunge, &modes, &mut self.out);
        if flushed > 0 && announce {
            write_highestmodseq(&mut self.out, sel.highestmodseq);
        }
        true
    }

    /// STARTTLS: answers OK, then runs the handshake. `None` when the tagged response
    /// was already written.
    async fn cmd_starttls(&mut self, tag: &str) -> Result<Option<Reply>, SessionError> {
        if self.tls {
            return Ok(Some(Reply::bad("TLS is already active")));
        }
        let Some(acceptor) = self.server.tls.clone() else {
            return Ok(Some(Reply::no(
                "[CANNOT] TLS is not configured on this server",
            )));
        };
        self.tagged(tag, &Reply::ok("Begin TLS negotiation now"));
        self.flush().await?;
        // Anything the client sent after STARTTLS arrived in plaintext and could have
        // been injected by a man in the middle: discard it (RFC 3207 / CVE-2011-0411).
        self.framer = Framer::new(*self.framer.limits());
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(SessionError::Tls("connection was not plain TCP".into()));
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = true;
                Ok(None)
            }
            Ok(Err(e)) => Err(SessionError::Tls(e.to_string())),
            Err(_) => Err(SessionError::Tls("handshake timed out".into())),
        }
    }

    /// The logged-in user's name and slot.
    pub(crate) fn ctx(&self) -> Result<(String, Slot), Reply> {
        match &self.user {
            Some(u) => Ok((u.name.clone(), u.slot.clone())),
            None => Err(Reply::bad("Log in first")),
        }
    }
}

fn write_highestmodseq(out: &mut Vec<u8>, m: store::ModSeq) {
    out.extend_from_slice(format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", m.0).as_bytes());
}

/// One read of whatever `stream` holds right now, without waiting: `None` if nothing is
/// ready. (A read that is not ready registers the task for wake-up; the spurious wake
/// that may follow is harmless.)
async fn read_now(stream: &mut Stream, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(rb.filled().len()))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Ready(None),
        }
    })
    .await
}
