//! The refund state machine: the one place that decides how a provider
//! outcome changes a refund's status.

use crate::providers::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "succeeded" => Some(Status::Succeeded),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, Status::Pending)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change (the outcome says nothing new, or repeats the final state).
    Stay,
    Move(Status),
    /// A final status contradicted by the provider: keep it, flag it, ask the provider.
    Conflict,
}

/// How `outcome` moves a refund that is `current`. Final states never go back
/// to pending; `unknown` and `not_found` never decide anything on their own.
pub fn decide(current: Status, outcome: Outcome) -> Decision {
    match (current, outcome) {
        (Status::Pending, Outcome::Succeeded) => Decision::Move(Status::Succeeded),
        (Status::Pending, Outcome::Failed) => Decision::Move(Status::Failed),
        (Status::Pending, _) => Decision::Stay,
        (Status::Succeeded, Outcome::Failed) | (Status::Failed, Outcome::Succeeded) => {
            Decision::Conflict
        }
        (Status::Succeeded | Status::Failed, _) => Decision::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finals_never_go_back() {
        use Outcome::*;
        for o in [Succeeded, Pending, Failed, Unknown, NotFound] {
            assert_ne!(
                decide(Status::Succeeded, o),
                Decision::Move(Status::Pending)
            );
            assert_ne!(decide(Status::Failed, o), Decision::Move(Status::Pending));
        }
        assert_eq!(
            decide(Status::Pending, Succeeded),
            Decision::Move(Status::Succeeded)
        );
        assert_eq!(
            decide(Status::Pending, Failed),
            Decision::Move(Status::Failed)
        );
        assert_eq!(decide(Status::Pending, Unknown), Decision::Stay);
        assert_eq!(decide(Status::Pending, NotFound), Decision::Stay);
        assert_eq!(decide(Status::Succeeded, Failed), Decision::Conflict);
        assert_eq!(decide(Status::Failed, Succeeded), Decision::Conflict);
        assert_eq!(decide(Status::Succeeded, Succeeded), Decision::Stay);
    }
}
