//! The session workflow as a client: `request`, `approve`, `deny`,
//! `status`, `wait`, `close`, `revoke`.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use super::Output;
use super::client_args::ClientArgs;
use crate::api::views::{NewSessionBody, SessionView};
use crate::error::Error;

/// Ask for a session on one resource.
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The resource, e.g. `db:payroll`.
    #[arg(long)]
    resource: String,
    /// What you will do with it (shown to approvers).
    #[arg(long)]
    task: String,
    /// How long the session stays open once approved, e.g. `2m`, `90s`.
    #[arg(long, value_parser = parse_duration)]
    duration: u32,
    /// Credential profile: `mtls-client` or `code-signing`.
    #[arg(long, default_value = "mtls-client")]
    profile: String,
    /// Bind the request to an artifact: `sha256:<hex>`.
    #[arg(long)]
    digest: Option<String>,
    /// Break-glass, for an incident: under the resource's break-glass
    /// rules the session opens at once (or on one approval), is short,
    /// is marked in its credentials and the trail, and is reviewed
    /// afterwards. Rate-limited per requester.
    #[arg(long)]
    break_glass: bool,
}

/// Approve a session after seeing exactly what it asks.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

/// Deny a session (it closes as denied).
#[derive(Debug, Args)]
pub struct DenyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Why.
    #[arg(long)]
    reason: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

/// Show a session, or list the sessions you may see.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id (none: list).
    id: Option<String>,
    /// When listing, only sessions in this state (pending, open, closed).
    #[arg(long)]
    state: Option<String>,
    /// List only break-glass sessions not (yet) reviewed justified:
    /// awaiting review, overdue, or found unjustified.
    #[arg(long, conflicts_with_all = ["id", "state"])]
    unreviewed: bool,
    /// When listing, at most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Wait until a session opens (exit 0) or closes without opening (exit 1),
/// showing approvals and time left.
#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Give up after this long (e.g. `10m`).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<u32>,
}

/// Close your own session (it ends as completed).
#[derive(Debug, Args)]
pub struct CloseArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
}

/// End a session as an approver or operator (it ends as revoked).
#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
    /// The reason code relying parties see: unspecified, key-compromise,
    /// affiliation-changed, superseded, cessation-of-operation or
    /// privilege-withdrawn (the default).
    #[arg(long, value_parser = parse_reason_code)]
    reason_code: Option<crate::sessions::RevocationReason>,
}

fn parse_reason_code(text: &str) -> Result<crate::sessions::RevocationReason, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        "one of unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn".to_owned()
    })
}

fn parse_duration(text: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 90s, 2m or 1h: {e}"))?;
    u32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s > 0 && d.subsec_nanos() == 0)
        .ok_or_else(|| format!("`{text}` must be whole seconds, at least 1s"))
}

/// A runtime for one client call.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))
}

fn human_secs(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// Text from a request, safe to put on a terminal: newlines and tabs (the
/// only control characters a task may hold) are shown escaped, so a task
/// cannot forge lines of the approval prompt.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The session, as text.
pub fn describe(s: &SessionView) -> String {
    let mut t = String::new();
    let state = match &s.close_reason {
        Some(r) => format!("closed ({r})"),
        None => s.state.clone(),
    };
    let _ = writeln!(t, "session    {}  [{state}]", s.id);
    if let Some(bg) = &s.break_glass {
        let _ = writeln!(t, "BREAK-GLASS review {}", super::review::review_line(bg));
    }
    let _ = writeln!(t, "requester  {}", s.requester);
    if let Some(tenant) = &s.tenant {
        let _ = writeln!(t, "tenant     {tenant}");
    }
    let _ = writeln!(t, "resource   {}", s.resource);
    let _ = writeln!(t, "task       {}", printable(&s.task));
    let _ = writeln!(
        t,
        "duration   {} ({}s)",
        human_secs(i64::from(s.duration_secs)),
        s.duration_secs
    );
    let _ = writeln!(
        t,
        "digest     {}",
        s.request_digest.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(t, "profile    {}", s.profile);
    if let Some(ci) = &s.build {
        // What an approver of a release checks: which build asks.
        let _ = writeln!(t, "build      {} (issuer)", printable(&ci.issuer));
        for (claim, value) in &ci.claims {
            let _ = writeln!(t, "           {claim} = {}", printable(value));
        }
    }
    if let (Some(allowed), Some(done)) = (s.signatures_allowed, s.signatures_timestamped) {
        let _ = writeln!(t, "signatures {done}/{allowed} timestamped");
    }
    let _ = writeln!(t, "hash       {}", s.request_hash);
    let approved: Vec<&str> = s.approvals.iter().map(|v| v.by.as_str()).collect();
    let _ = writeln!(
        t,
        "approvals  {}/{}{}  (approvers: {})",
        s.approvals.len(),
        s.quorum,
        if approved.is_empty() {
            String::new()
        } else {
            format!(" by {}", approved.join(", "))
        },
        s.approvers.join(", ")
    );
    for d in &s.denials {
        let _ = writeln!(
            t,
            "denied by  {} at {}{}",
            d.by,
            d.at,
            d.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    match s.state.as_str() {
        "pending" => {
            let _ = writeln!(
                t,
                "pending    until {} ({} left)",
                s.pending_until,
                human_secs(s.seconds_left)
            );
        }
        "open" => {
            let _ = writeln!(
                t,
                "open       {} .. {} ({} left)",
                s.opened_at.as_deref().unwrap_or("?"),
                s.closes_at.as_deref().unwrap_or("?"),
                human_secs(s.seconds_left)
            );
        }
        _ => {
            let _ = writeln!(
                t,
                "closed     at {}{}{}",
                s.closed_at.as_deref().unwrap_or("?"),
                s.closed_by
                    .as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                s.close_note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        t,
        "credentials {} of {} minted",
        s.credentials_minted, s.credentials_allowed
    );
    t
}

/// Asks "question [y/N]" on the terminal; refuses to guess without one.
fn confirm(question: &str) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::InvalidArgument(
            "no terminal to confirm on: pass --yes after reviewing the request (lockstep status ID)"
                .into(),
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("stdin", e))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Runs `request`.
pub fn request(args: RequestArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let body = NewSessionBody {
        resource: args.resource,
        task: args.task,
        request_digest: args.digest,
        duration_secs: args.duration,
        profile: args.profile,
        break_glass: args.break_glass,
    };
    let s = runtime()?.block_on(client.request(&body))?;
    out.print(&s, || {
        let next = match s.state.as_str() {
            "open" => format!(
                "Open now (break-glass): every approver is told, and it must be reviewed (lockstep review {} ...).\n",
                s.id
            ),
            _ => format!(
                "Waiting for {} approval(s). Follow it with: lockstep wait {}\n",
                s.quorum, s.id
            ),
        };
        format!("{}\n{next}", describe(&s))
    });
    Ok(())
}

/// Runs `approve`: shows the request, asks, approves exactly that hash.
pub fn approve(args: ApproveArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let rt = runtime()?;
    let s = rt.block_on(client.session(&args.id))?;
    if !args.yes {
        eprint!("{}", describe(&s));
        if !confirm("Approve this request?")? {
            return Err(Error::InvalidArgument("not approved".into()));
        }
    }
    let s = rt.block_on(client.approve(&args.id, &s.request_hash))?;
    out.print(&s, || {
        format!(
            "approved {} ({} of {}); session is {}\n",
            s.id,
            s.approvals.len(),
            s.quorum,
            s.state
        )
    });
    Ok(())
}

/// Runs `deny`.
pub fn deny(args: DenyArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let rt = runtime()?;
    let s = rt.block_on(client.session(&args.id))?;
    if !args.yes {
        eprint!("{}", describe(&s));
        if !confirm("Deny this request?")? {
            return Err(Error::InvalidArgument("not denied".into()));
        }
    }
    let s = rt.block_on(client.deny(&args.id, &s.request_hash, args.reason))?;
    out.print(&s, || format!("denied {}; session is {}\n", s.id, s.state));
    Ok(())
}

/// Runs `status`.
pub fn status(args: StatusArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let rt = runtime()?;
    match args.id {
        Some(id) => {
            let s = rt.block_on(client.session(&id))?;
            out.print(&s, || describe(&s));
        }
        None if args.unreviewed => {
            let list = rt.block_on(client.unreviewed(args.limit))?;
            out.print(&list, || super::review::unreviewed_table(&list));
        }
        None => {
            let list = rt.block_on(client.sessions(args.state.as_deref(), args.limit))?;
            out.print(&list, || {
                let mut t = String::new();
                for s in &list.sessions {
                    let _ = writeln!(
                        t,
                        "{}  {:<8} {:<10} {:<24} {} ({}/{} approvals)",
                        s.id,
                        s.state,
                        format!("{:?}", s.your_role).to_lowercase(),
                        s.resource,
                        s.requester,
                        s.approvals.len(),
                        s.quorum
                    );
                }
                if list.sessions.is_empty() {
                    t.push_str("(no sessions you may see)\n");
                }
                if list.next_before.is_some() {
                    t.push_str("(there may be more: raise --limit to see them)\n");
                }
                t
            });
        }
    }
    Ok(())
}

/// Runs `wait`.
pub fn wait(args: WaitArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let rt = runtime()?;
    let bar = if out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let s = rt.block_on(async {
        loop {
            let s = client.session(&args.id).await?;
            match s.state.as_str() {
                "pending" => bar.set_message(format!(
                    "{}: pending, approvals {}/{}, {} left to approve",
                    s.id,
                    s.approvals.len(),
                    s.quorum,
                    human_secs(s.seconds_left)
                )),
                _ => return Ok::<_, Error>(s),
            }
            if let Some(limit) = args.timeout
                && started.elapsed() > Duration::from_secs(u64::from(limit))
            {
                return Err(Error::InvalidArgument(format!(
                    "session {} is still pending after {}",
                    s.id,
                    human_secs(i64::from(limit))
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    bar.finish_and_clear();
    let s = s?;
    out.print(&s, || match s.state.as_str() {
        "open" => format!(
            "{}: open, approved by {}; closes at {} ({} left)\n",
            s.id,
            s.approvals
                .iter()
                .map(|v| v.by.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            s.closes_at.as_deref().unwrap_or("?"),
            human_secs(s.seconds_left)
        ),
        _ => describe(&s),
    });
    match s.state.as_str() {
        "open" => Ok(()),
        _ => Err(Error::SessionEnded(format!(
            "session {} closed without opening ({})",
            s.id,
            s.close_reason.as_deref().unwrap_or("closed")
        ))),
    }
}

/// Runs `close`.
pub fn close(args: CloseArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let s = runtime()?.block_on(client.close(&args.id))?;
    out.print(&s, || format!("closed {} (completed)\n", s.id));
    Ok(())
}

/// Runs `revoke`.
pub fn revoke(args: RevokeArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let s = runtime()?.block_on(client.revoke(&args.id, args.reason, args.reason_code))?;
    out.print(&s, || format!("revoked {}\n", s.id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_cannot_forge_prompt_lines() {
        assert_eq!(
            printable("a\nresource   db:other"),
            "a\\nresource   db:other"
        );
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("plain ü"), "plain ü");
    }

    #[test]
    fn durations_are_whole_positive_seconds() {
        assert_eq!(parse_duration("2m").unwrap(), 120);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1500ms").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
