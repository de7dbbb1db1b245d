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
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A client that does not read its responses for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection, plain or TLS (after STARTTLS or on the imaps port).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
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
            Stream::Closed => Poll::Ready(Err(closed_error())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    rbuf: Vec<u8>,
    /// Responses not yet written to the socket.
    pub out: Vec<u8>,
    pub tls: bool,
    pub user: Option<UserCtx>,
    pub selected: Option<Selected>,
    pub parse_opts: ParseOptions,
    bad_in_a_row: u32,
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
    let mut limits = server.config.limits;
    // Only APPEND carries big literals; refuse anything larger up front, before the
    // client sends it.
    let append_max = usize::try_from(server.config.append_bytes_max).unwrap_or(usize::MAX);
    limits.literal_bytes_max = limits.literal_bytes_max.min(append_max);
    let mut session = Session {
        server,
        peer,
        stream,
        framer: Framer::new(limits),
        rbuf: vec![0; READ_CHUNK_BYTES],
        out: Vec::new(),
        tls: implicit_tls,
        user: None,
        selected: None,
        parse_opts: ParseOptions::default(),
        bad_in_a_row: 0,
    };
    let _ = session.serve().await;
    let _ = session.stream.shutdown().await;
}

impl Session {
    async fn serve(&mut self) -> Result<(), SessionError> {
        let greeting = format!("OK [CAPABILITY {}] Tandem ready", self.capabilities());
        self.untagged(&greeting);
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
            match self.read_more(self.inactivity_limit()).await? {
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

    /// Reads what the client sent next into the framer.
    pub(crate) async fn read_more(&mut self, limit: Duration) -> Result<ReadOutcome, SessionError> {
        match tokio::time::timeout(limit, self.stream.read(&mut self.rbuf)).await {
            Err(_) => Ok(ReadOutcome::TimedOut),
            Ok(Ok(0)) => Ok(ReadOutcome::Eof),
            Ok(Ok(n)) => {
                self.framer.push(&self.rbuf[..n]);
                Ok(ReadOutcome::Data)
            }
            Ok(Err(e)) => Err(e.into()),
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

    fn tagged(&mut self, tag: &str, reply: &Reply) {
        self.out.extend_from_slice(tag.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(reply.status_word().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(reply.text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// May the client send a password now?
    pub(crate) fn login_allowed(&self) -> bool {
        self.tls || self.server.config.allow_plaintext_auth
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
        // RFC 3501 7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH (sequence
        // numbers the client is using would shift under it).
        let allow_expunge = !matches!(
            kind,
            CommandKind::Fetch { .. } | CommandKind::Store { .. } | CommandKind::Search { .. }
        );
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
            CommandKind::Id(_) => {
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
            CommandKind::Select { mailbox, .. } => self.cmd_select(&mailbox, false).await,
            CommandKind::Examine { mailbox, .. } => self.cmd_select(&mailbox, true).await,
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
            CommandKind::Status { mailbox, items } => self.cmd_status(&mailbox, &items),
            CommandKind::Append { mailbox, messages } => self.cmd_append(&mailbox, messages).await,
            CommandKind::Idle => self.cmd_idle().await?,
            CommandKind::Unauthenticate
            | CommandKind::GetQuota(_)
            | CommandKind::GetQuotaRoot(_) => Reply::bad("Command not supported by this server"),
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
        };
        if self.selected.is_some() && !self.sync_selected(allow_expunge) {
            self.untagged("BYE The selected mailbox was deleted; please reconnect");
            return Ok(Flow::Close);
        }
        self.tagged(&tag, &reply);
        if reply.status == Status::Bad {
            Ok(self.note_bad())
        } else {
            self.bad_in_a_row = 0;
            Ok(Flow::Continue)
        }
    }

    /// Brings the selected mailbox's view up to date and queues the untagged responses.
    /// Returns false when the mailbox no longer exists. Read failures are left for the
    /// next command (the view stays as it was).
    pub(crate) fn sync_selected(&mut self, allow_expunge: bool) -> bool {
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
        if header.highestmodseq == sel.highestmodseq {
            if allow_expunge {
                sel.flush_expunges(&mut self.out);
            }
            return true;
        }
        let Ok(entries) = view.messages(&header) else {
            return true;
        };
        let last = entries.last().map_or(0, |e| match e {
            Ok(r) => r.uid.0,
            Err(c) => c.uid.0,
        });
        let prev = if sel.read_only {
            self.server.recent.peek(user.slot.name(), sel.id)
        } else {
            self.server.recent.claim(user.slot.name(), sel.id, last)
        };
        let recent_above = prev.unwrap_or(0).max(sel.last_uid());
        sel.apply(&header, entries, recent_above, allow_expunge, &mut self.out);
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
