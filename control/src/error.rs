//! Control's error type and its one mapping to gRPC statuses.

use hookrelay_common::model::FieldError;

/// Result of control's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a control operation failed. Messages are precise and safe to show to the caller, except for storage
/// failures, whose details are logged rather than returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field breaks a rule.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field, e.g. `filter_types[1]`.
        field: String,
        /// Why it was refused.
        message: String,
    },
    /// The named record does not exist; holds e.g. `owner "acme"`.
    #[error("{0} not found")]
    NotFound(String),
    /// A record with that id exists already; holds e.g. `owner "acme"`.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is valid but the current state refuses it (a limit, a reference).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A component the request needs is not reachable now (an agent that is not connected); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The embedded database failed.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The PostgreSQL database failed: a connection, a statement or a transaction.
    #[error("database error: {0}")]
    Database(String),
    /// The database's schema was migrated by a newer control than this one.
    #[error(
        "the database's schema is at version {found}, newer than this control's ({known}); run a control at least as \
         new as the one that last migrated it"
    )]
    SchemaTooNew {
        /// The newest migration applied to the database.
        found: i32,
        /// The newest migration this binary knows.
        known: i32,
    },
    /// The master key does not open the store's secrets (checked when the store opens).
    #[error(
        "the master key does not match the one this data directory's secrets were sealed with; give control that \
         key (--master-key-file, HOOKRELAY_MASTER_KEY_FILE or HOOKRELAY_MASTER_KEY)"
    )]
    WrongMasterKey,
    /// A stored record does not decode.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        /// Which record, e.g. `endpoint ep_...`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// `INVALID_ARGUMENT` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }
}

impl From<FieldError> for Error {
    fn from(error: FieldError) -> Self {
        Self::InvalidArgument { field: error.field, message: error.message }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::Storage(_)
            | Error::Database(_)
            | Error::SchemaTooNew { .. }
            | Error::Corrupt { .. }
            | Error::WrongMasterKey => {
                tracing::error!(error = %message, "storage failure");
                tonic::Status::internal("control's storage failed; see its logs")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn maps_each_kind_to_its_status() {
        let cases = [
            (
                Error::from(FieldError::new("filter_types[1]", "event type \"card.viewed\" is not in the catalog")),
                Code::InvalidArgument,
                "filter_types[1]: event type \"card.viewed\" is not in the catalog",
            ),
            (Error::NotFound("endpoint ep_1".into()), Code::NotFound, "endpoint ep_1 not found"),
            (Error::AlreadyExists("owner \"acme\"".into()), Code::AlreadyExists, "owner \"acme\" already exists"),
            (Error::FailedPrecondition("limit".into()), Code::FailedPrecondition, "limit"),
            (
                Error::Storage(sled::Error::Unsupported("x".into())),
                Code::Internal,
                "control's storage failed; see its logs",
            ),
            (
                Error::Database("db error: ERROR: relation \"owners\" does not exist".into()),
                Code::Internal,
                "control's storage failed; see its logs",
            ),
            (Error::SchemaTooNew { found: 3, known: 2 }, Code::Internal, "control's storage failed; see its logs"),
        ];
        for (error, code, message) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }
}
