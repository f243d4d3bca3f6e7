//! `lockstep review`: a break-glass session's after-review, and the
//! listing of those still unreviewed (`lockstep status --unreviewed`).

use std::fmt::Write as _;

use clap::Args;

use super::Output;
use super::client_args::ClientArgs;
use super::session::runtime;
use crate::api::views::{BreakGlassView, SessionList};
use crate::error::Error;
use crate::sessions::Outcome;

/// Record whether a break-glass session was justified (its reviewers
/// only; never its requester). An unjustified session still open is
/// revoked.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// What you found: `justified` or `unjustified`.
    #[arg(long, value_parser = parse_outcome)]
    outcome: Outcome,
    /// Why (recorded in the trail).
    #[arg(long)]
    note: String,
}

fn parse_outcome(text: &str) -> Result<Outcome, String> {
    Outcome::parse(text).ok_or_else(|| "justified or unjustified".to_owned())
}

/// Runs `review`.
pub fn run(args: ReviewArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let s = runtime()?.block_on(client.review(&args.id, args.outcome, args.note))?;
    out.print(&s, || {
        let closed = match (args.outcome, s.state.as_str()) {
            (Outcome::Unjustified, "closed") => "; the session is closed (revoked)",
            _ => "",
        };
        format!("reviewed {}: {}{closed}\n", s.id, args.outcome.as_str())
    });
    Ok(())
}

/// One break-glass session's review, as a line of text.
pub(super) fn review_line(bg: &BreakGlassView) -> String {
    let mut t = bg.review.clone();
    if let Some(by) = &bg.review_by
        && bg.reviewed_by.is_none()
    {
        let _ = write!(t, ", due by {by}");
    }
    if let (Some(who), Some(at)) = (&bg.reviewed_by, &bg.reviewed_at) {
        let _ = write!(t, " by {who} at {at}");
    }
    if let Some(note) = &bg.review_note {
        let _ = write!(t, ": {}", note.escape_debug());
    }
    t
}

/// `lockstep status --unreviewed`, as text.
pub(super) fn unreviewed_table(list: &SessionList) -> String {
    let mut t = String::new();
    for s in &list.sessions {
        let review = s.break_glass.as_ref().map_or_else(String::new, review_line);
        let _ = writeln!(
            t,
            "{}  {:<8} {:<24} {}  review {review}",
            s.id, s.state, s.resource, s.requester
        );
    }
    if list.sessions.is_empty() {
        t.push_str("(no unreviewed break-glass sessions you may see)\n");
    }
    if list.next_before.is_some() {
        t.push_str("(there may be more: raise --limit to see them)\n");
    }
    t
}
