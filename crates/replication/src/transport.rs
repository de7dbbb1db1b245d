//! TCP + TLS (rustls 0.23, ring provider) with mutual authentication by the cluster CA,
//! and the framed, blocking connection both ends speak over it. Blocking on purpose:
//! each sync runs on its own thread and calls the store (which blocks) between frames;
//! every socket read and write has a timeout, so a dead peer costs one timeout.

use crate::ReplError;
use crate::wire::{self, FRAME_HEADER_BYTES, Frame, Msg};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::Epoch;

/// The PEM files a host needs (see `pki.rs`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Client and server configurations of one host, both trusting only the cluster CA.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ReplError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ReplError::Config(format!("cannot read certificate {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ReplError::Config(format!("{} is not a PEM certificate: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ReplError::Config(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls, ReplError> {
        let hint = "make them with `tandem cluster ca init` and `tandem cluster cert issue HOST`";
        for p in [&files.ca, &files.cert, &files.key] {
            if !p.exists() {
                return Err(ReplError::Config(format!(
                    "replication needs {}: {hint}",
                    p.display()
                )));
            }
        }
        let mut roots = RootCertStore::empty();
        for c in read_certs(&files.ca)? {
            roots
                .add(c)
                .map_err(|e| ReplError::Config(format!("bad CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs(&files.cert)?;
        let key = || {
            PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
                ReplError::Config(format!(
                    "cannot read private key {}: {e}",
                    files.key.display()
                ))
            })
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| ReplError::Config(format!("client verifier: {e}")))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ReplError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| ReplError::Config(format!("host certificate and key: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ReplError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key()?)
            .map_err(|e| ReplError::Config(format!("host certificate and key: {e}")))?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The server side (client certificates required, verified against the cluster CA),
    /// for other listeners among cluster hosts (the frontend proxy, async).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client side (this host's certificate, only the cluster CA trusted).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Connects to `host` at `addr`; the server must present a certificate for `host`.
    pub fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        io_timeout: Duration,
    ) -> Result<Conn, ReplError> {
        let tcp = TcpStream::connect_timeout(&addr, io_timeout)
            .map_err(|e| ReplError::io(format!("connect to {host} at {addr}"), e))?;
        prepare(&tcp, io_timeout)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ReplError::Config(format!("{host:?} is not a valid TLS server name")))?;
        let mut conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| ReplError::Tls(format!("handshake with {host} at {addr}: {e}")))?;
        }
        Ok(Conn {
            s: Box::new(StreamOwned::new(conn, tcp)),
            peer: host.to_string(),
        })
    }

    /// Completes the server side of a handshake; returns the connection and the client's
    /// certificate (already verified against the CA) for [`cert_names_host`].
    pub fn accept(
        &self,
        tcp: TcpStream,
        io_timeout: Duration,
    ) -> Result<(Conn, Vec<u8>), ReplError> {
        prepare(&tcp, io_timeout)?;
        let peer = tcp
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let mut conn = ServerConnection::new(self.server.clone())
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| ReplError::Tls(format!("handshake with {peer}: {e}")))?;
        }
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| ReplError::Tls(format!("{peer} sent no client certificate")))?;
        Ok((
            Conn {
                s: Box::new(StreamOwned::new(conn, tcp)),
                peer,
            },
            cert,
        ))
    }
}

fn prepare(tcp: &TcpStream, io_timeout: Duration) -> Result<(), ReplError> {
    tcp.set_nodelay(true)
        .and_then(|_| tcp.set_read_timeout(Some(io_timeout)))
        .and_then(|_| tcp.set_write_timeout(Some(io_timeout)))
        .map_err(|e| ReplError::io("socket options", e))
}

/// True if a certificate (already verified against the CA) names `host`.
pub fn cert_names_host(cert_der: &[u8], host: &str) -> bool {
    let der = CertificateDer::from(cert_der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A framed connection (see `wire.rs`). One request, one reply, in order.
pub struct Conn {
    s: Box<dyn Stream>,
    /// The peer, for errors: a host name (client side) or an address (server side).
    pub peer: String,
}

impl Conn {
    pub fn send(&mut self, epoch: Epoch, msg: &Msg) -> Result<(), ReplError> {
        let buf = wire::encode(&Frame {
            epoch,
            msg: msg.clone(),
        });
        self.send_encoded(&buf, msg.name())
    }

    /// Sends a `Blob` frame without copying the bytes into a `Msg` first.
    pub fn send_blob(
        &mut self,
        epoch: Epoch,
        hash: store::BlobHash,
        bytes: Vec<u8>,
    ) -> Result<(), ReplError> {
        let buf = wire::encode(&Frame {
            epoch,
            msg: Msg::Blob { hash, bytes },
        });
        self.send_encoded(&buf, "Blob")
    }

    fn send_encoded(&mut self, buf: &[u8], what: &str) -> Result<(), ReplError> {
        if buf.len() > FRAME_HEADER_BYTES + wire::FRAME_BYTES_MAX {
            return Err(ReplError::Protocol(format!(
                "{what} frame of {} bytes is over the {} byte limit",
                buf.len(),
                wire::FRAME_BYTES_MAX
            )));
        }
        self.s
            .write_all(buf)
            .and_then(|_| self.s.flush())
            .map_err(|e| ReplError::io(format!("send {what} to {}", self.peer), e))
    }

    pub fn recv(&mut self) -> Result<Frame, ReplError> {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        self.s
            .read_exact(&mut h)
            .map_err(|e| ReplError::io(format!("read from {}", self.peer), e))?;
        let n = wire::body_len(&h).map_err(|e| self.wire_err(e))?;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut body = vec![0u8; n];
        self.s
            .read_exact(&mut body)
            .map_err(|e| ReplError::io(format!("read from {}", self.peer), e))?;
        wire::decode_body(crc, &body).map_err(|e| self.wire_err(e))
    }

    fn wire_err(&self, source: wire::WireError) -> ReplError {
        ReplError::Wire {
            peer: self.peer.clone(),
            source,
        }
    }

    /// Sends a request and returns the reply; `Error` and `Refused` replies are errors.
    pub fn call(&mut self, epoch: Epoch, msg: &Msg) -> Result<Frame, ReplError> {
        self.send(epoch, msg)?;
        let f = self.recv()?;
        match f.msg {
            Msg::Error { reason } => Err(ReplError::Protocol(format!(
                "{} answered {}: {reason}",
                self.peer,
                msg.name()
            ))),
            Msg::Refused { reason } => Err(ReplError::Refused {
                peer: self.peer.clone(),
                epoch: f.epoch,
                reason,
            }),
            _ => Ok(f),
        }
    }
}
