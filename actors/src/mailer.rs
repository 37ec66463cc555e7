//! Outgoing mail: the [`Mailer`] trait and its two implementations, chosen by `[users] mailer`.
//!
//! - [`OutboxMailer`] (the default) writes each mail as an RFC 5322 `.eml` file under
//!   `<node data dir>/outbox/` and logs its link, so a local cluster needs no mail server.
//! - [`SmtpMailer`] sends through an SMTP relay with `lettre` (implicit TLS, STARTTLS or, for a
//!   local relay, plain text).
//!
//! Both build the message with `lettre`, so what lands in the outbox is what SMTP would send.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use runtime::clock::unix_ms;

use crate::config::{MailerKind, SmtpTls, UsersSection};

/// Longest an SMTP exchange may take before the mail counts as failed.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the outbox directory inside a node's data directory.
pub const OUTBOX_DIR: &str = "outbox";

/// One plain-text mail.
#[derive(Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    /// The action link inside `text`; the outbox mailer logs it (a development convenience:
    /// SMTP never logs it, since the link is a credential).
    pub link: Option<String>,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Mail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    #[error("invalid address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot build the mail: {0}")]
    Build(String),
    #[error("cannot write the mail to the outbox: {0}")]
    Outbox(String),
    #[error("SMTP: {0}")]
    Smtp(String),
}

pub type MailFuture<'a> = Pin<Box<dyn Future<Output = Result<(), MailError>> + Send + 'a>>;

/// Sends mail. Implementations bound their own time (no send waits forever).
pub trait Mailer: Send + Sync + std::fmt::Debug {
    fn send(&self, mail: Mail) -> MailFuture<'_>;
}

/// The mailer `[users]` asks for. `node_data_dir` holds the outbox.
pub fn from_config(
    users: &UsersSection,
    node_data_dir: &Path,
) -> Result<Arc<dyn Mailer>, MailError> {
    let from = parse_mailbox(&users.mail_from)?;
    Ok(match users.mailer {
        MailerKind::Outbox => Arc::new(OutboxMailer::new(node_data_dir.join(OUTBOX_DIR), from)),
        MailerKind::Smtp => Arc::new(SmtpMailer::new(users, from)?),
    })
}

fn parse_mailbox(address: &str) -> Result<Mailbox, MailError> {
    address
        .parse()
        .map_err(|error: lettre::address::AddressError| MailError::Address {
            address: address.to_string(),
            reason: error.to_string(),
        })
}

fn build_message(from: &Mailbox, mail: &Mail) -> Result<Message, MailError> {
    let body = seven_bit_body(&mail.text).unwrap_or_else(|| Body::new(mail.text.clone()));
    Message::builder()
        .from(from.clone())
        .to(parse_mailbox(&mail.to)?)
        .subject(mail.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|error| MailError::Build(error.to_string()))
}

/// Longest line of a 7-bit body (RFC 5322: 998 characters plus CRLF).
const SEVEN_BIT_LINE_BYTES_MAX: usize = 998;

/// The text as a 7-bit body with CRLF line ends, if it is ASCII without NUL and its lines fit
/// RFC 5322. lettre itself switches to quoted-printable past 76 characters, which would break
/// activation links for whoever reads the raw mail (people using the outbox, and tests).
fn seven_bit_body(text: &str) -> Option<Body> {
    let fits = text.is_ascii()
        && !text.contains('\0')
        && !text.contains('\r')
        && text
            .split('\n')
            .all(|line| line.len() <= SEVEN_BIT_LINE_BYTES_MAX);
    fits.then(|| {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    })
}

/// Writes mails as `.eml` files into a directory.
#[derive(Debug, Clone)]
pub struct OutboxMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl OutboxMailer {
    pub fn new(dir: PathBuf, from: Mailbox) -> Self {
        Self { dir, from }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn write(&self, mail: Mail) -> Result<(), MailError> {
        let message = build_message(&self.from, &mail)?;
        let outbox_error = |error: std::io::Error| MailError::Outbox(error.to_string());
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(outbox_error)?;
        let mut unique = [0u8; 6];
        getrandom::fill(&mut unique).map_err(|error| MailError::Outbox(error.to_string()))?;
        let unique: String = unique.iter().map(|byte| format!("{byte:02x}")).collect();
        let stem = format!("{:013}-{unique}", unix_ms());
        // Written under a temporary name and renamed, so a reader never sees half a mail.
        let partial = self.dir.join(format!(".{stem}.partial"));
        let path = self.dir.join(format!("{stem}.eml"));
        tokio::fs::write(&partial, message.formatted())
            .await
            .map_err(outbox_error)?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(outbox_error)?;
        match &mail.link {
            Some(link) => tracing::info!(
                to = %mail.to,
                subject = %mail.subject,
                path = %path.display(),
                %link,
                "mail written to the outbox"
            ),
            None => tracing::info!(
                to = %mail.to,
                subject = %mail.subject,
                path = %path.display(),
                "mail written to the outbox"
            ),
        }
        Ok(())
    }
}

impl Mailer for OutboxMailer {
    fn send(&self, mail: Mail) -> MailFuture<'_> {
        Box::pin(self.write(mail))
    }
}

/// Sends through an SMTP relay.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SmtpMailer({})", self.host)
    }
}

impl SmtpMailer {
    pub fn new(users: &UsersSection, from: Mailbox) -> Result<Self, MailError> {
        let host = users
            .smtp_host
            .clone()
            .ok_or_else(|| MailError::Smtp("`users.smtp_host` is not set".into()))?;
        let smtp_error = |error: lettre::transport::smtp::Error| MailError::Smtp(error.to_string());
        let (builder, default_port) = match users.smtp_tls {
            SmtpTls::Tls => (
                AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(smtp_error)?,
                465,
            ),
            SmtpTls::Starttls => (
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host).map_err(smtp_error)?,
                587,
            ),
            SmtpTls::None => (
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
                25,
            ),
        };
        let mut builder = builder
            .port(users.smtp_port.unwrap_or(default_port))
            .timeout(Some(SMTP_TIMEOUT));
        if let (Some(username), Some(password)) = (&users.smtp_username, &users.smtp_password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            host,
        })
    }

    async fn deliver(&self, mail: Mail) -> Result<(), MailError> {
        let message = build_message(&self.from, &mail)?;
        // lettre's own timeout covers each command; this one covers the whole exchange.
        match tokio::time::timeout(SMTP_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => {
                tracing::info!(to = %mail.to, subject = %mail.subject, relay = %self.host, "mail sent");
                Ok(())
            }
            Ok(Err(error)) => Err(MailError::Smtp(error.to_string())),
            Err(_) => Err(MailError::Smtp(format!(
                "no answer from {} within {} s",
                self.host,
                SMTP_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, mail: Mail) -> MailFuture<'_> {
        Box::pin(self.deliver(mail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(link: &str) -> Mail {
        Mail {
            to: "alice@example.com".into(),
            subject: "Activate your ActorHub account".into(),
            text: format!("Hello Alice,\n\nOpen this link to activate your account:\n{link}\n"),
            link: Some(link.into()),
        }
    }

    #[tokio::test]
    async fn the_outbox_holds_one_readable_eml_per_mail_with_the_link_intact() {
        let dir = std::env::temp_dir().join(format!("actorhub-outbox-test-{}", unix_ms()));
        let users = UsersSection::default();
        let mailer = from_config(&users, &dir).expect("outbox mailer");
        let link = format!(
            "http://127.0.0.1:8080/api/users/verify?token={}.{}",
            "a".repeat(32),
            "b".repeat(64)
        );
        mailer.send(mail(&link)).await.expect("sent");
        mailer.send(mail(&link)).await.expect("sent");
        let outbox = dir.join(OUTBOX_DIR);
        let files: Vec<PathBuf> = std::fs::read_dir(&outbox)
            .expect("outbox exists")
            .map(|entry| entry.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).expect("read");
        assert!(files[0].extension().is_some_and(|ext| ext == "eml"));
        assert!(text.contains("To: alice@example.com"), "{text}");
        assert!(
            text.contains("Subject: Activate your ActorHub account"),
            "{text}"
        );
        assert!(
            text.contains(&link),
            "the link must survive encoding:\n{text}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn smtp_needs_a_host_and_valid_addresses() {
        let mut users = UsersSection {
            mailer: MailerKind::Smtp,
            ..UsersSection::default()
        };
        assert!(from_config(&users, Path::new("/nonexistent")).is_err());
        users.smtp_host = Some("smtp.example.com".into());
        users.smtp_username = Some("hub".into());
        users.smtp_password = Some("secret".into());
        let mailer = from_config(&users, Path::new("/nonexistent")).expect("smtp mailer");
        assert_eq!(format!("{mailer:?}"), "SmtpMailer(smtp.example.com)");
        users.mail_from = "not an address".into();
        assert!(matches!(
            from_config(&users, Path::new("/nonexistent")),
            Err(MailError::Address { .. })
        ));
    }
}
