//! What a client does about an [`ErrorCode`].
//!
//! The schema groups codes by their thousands digit (1xxx retry, 2xxx
//! reconnect, 3xxx give up), so a client also knows what to do about a code
//! added after it was built: [`ErrorAction::from_code`] reads the raw number.

use crate::pb::ErrorCode;

/// What a client does after receiving an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorAction {
    /// The request failed for now; send it again after `retry_after_ms` (or
    /// a backoff of the client's choosing). The connection stays open.
    /// Resending a `Send` with the same `client_msg_id` is always safe.
    Retry,
    /// The server closes the connection; open a new one (with backoff,
    /// through discovery), `Hello`, then `Sync` from the last cursor.
    Reconnect,
    /// Resending the same request cannot succeed: fix it, obtain a new
    /// token, or report to the user.
    GiveUp,
}

impl ErrorAction {
    /// The action for a raw `Error.code` number, including numbers this
    /// build does not know: 1000–1999 retry, 2000–2999 reconnect, anything
    /// else give up.
    #[must_use]
    pub fn from_code(code: i32) -> Self {
        match code {
            1000..=1999 => Self::Retry,
            2000..=2999 => Self::Reconnect,
            _ => Self::GiveUp,
        }
    }
}

impl ErrorCode {
    /// What a client does about this code.
    ///
    /// Agrees with [`ErrorAction::from_code`] on every known code; listing
    /// each one here makes adding a code a deliberate choice.
    #[must_use]
    pub fn action(self) -> ErrorAction {
        match self {
            Self::RateLimited | Self::ServerBusy | Self::Unavailable => ErrorAction::Retry,
            Self::SlowConsumer
            | Self::ServerDraining
            | Self::IdleTimeout
            | Self::HandshakeTimeout => ErrorAction::Reconnect,
            Self::Unspecified
            | Self::Unauthenticated
            | Self::TokenExpired
            | Self::TokenInvalid
            | Self::TooManyConnections
            | Self::FrameTooLarge
            | Self::MalformedFrame
            | Self::Unsupported
            | Self::InvalidArgument
            | Self::BodyTooLarge
            | Self::NotFound
            | Self::NotAMember
            | Self::Blocked
            | Self::CursorExpired
            | Self::PermissionDenied
            | Self::AlreadyExists
            | Self::GroupFull
            | Self::Internal => ErrorAction::GiveUp,
        }
    }
}

impl crate::pb::Error {
    /// What a client does about this error; unknown codes fall back on the
    /// code's range (see [`ErrorAction::from_code`]).
    #[must_use]
    pub fn action(&self) -> ErrorAction {
        ErrorAction::from_code(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the schema defines, found by trying every number in the
    /// ranges it uses.
    fn all_codes() -> Vec<ErrorCode> {
        (0..10_000)
            .filter_map(|n| ErrorCode::try_from(n).ok())
            .collect()
    }

    #[test]
    fn action_agrees_with_the_code_range() {
        let codes = all_codes();
        assert!(codes.len() > 20, "found only {} codes", codes.len());
        for code in codes {
            assert_eq!(
                code.action(),
                ErrorAction::from_code(code as i32),
                "{}",
                code.as_str_name()
            );
        }
    }

    #[test]
    fn every_action_has_codes() {
        let codes = all_codes();
        for action in [
            ErrorAction::Retry,
            ErrorAction::Reconnect,
            ErrorAction::GiveUp,
        ] {
            assert!(
                codes.iter().any(|code| code.action() == action),
                "{action:?}"
            );
        }
    }

    #[test]
    fn unknown_codes_follow_their_range() {
        assert_eq!(ErrorAction::from_code(1999), ErrorAction::Retry);
        assert_eq!(ErrorAction::from_code(2500), ErrorAction::Reconnect);
        assert_eq!(ErrorAction::from_code(3998), ErrorAction::GiveUp);
        assert_eq!(ErrorAction::from_code(-1), ErrorAction::GiveUp);
        assert_eq!(ErrorAction::from_code(7), ErrorAction::GiveUp);
    }

    #[test]
    fn error_frame_action_reads_raw_code() {
        let error = crate::pb::Error {
            code: ErrorCode::ServerDraining as i32,
            message: String::from("shutting down"),
            retry_after_ms: 0,
        };
        assert_eq!(error.action(), ErrorAction::Reconnect);
    }
}
